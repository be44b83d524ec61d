//! The state every service and loop shares, behind one `Arc`: the store, the configuration,
//! the live agent sessions, the token and gate caches, and the signals between tasks (wake
//! the scheduler, re-evaluate a gate, something changed, shutdown).
//!
//! **Boundary:** this module sits below the gRPC services (`grpc/`) and the loops
//! (`scheduler.rs`, `lease.rs`, `gates.rs`): they import it, it imports none of them.

use crate::config::ControllerConfig;
use crate::gate_cache::GateCache;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::tokens::{StoredTokens, TokenCache};
use opentelemetry::trace::SpanContext;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tollgate_domain::{RunId, Timestamp};

/// A large share of the fleet silent at once (`tollgate_domain::lease::OutagePolicy`): no lease
/// expires while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetOutage {
    /// When the watchdog first saw it.
    pub since: Timestamp,
    /// Silent nodes, at the last look.
    pub silent: usize,
    /// Watched nodes, at the last look.
    pub watched: usize,
}

/// State every service, the scheduler and the lease watchdog share, behind one `Arc`.
///
/// Ownership: `run` creates it and holds the only long-lived clone besides the services and
/// the two loops; everything in it is safe to use from any task. Shutdown is announced
/// through `shutdown`, never by dropping this.
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub store: Store,
    /// Flags and the clock.
    pub config: ControllerConfig,
    /// Live agent sessions: who can be sent a command right now.
    pub sessions: Sessions,
    /// Node tokens already seen, so a call does not cost a database lookup.
    pub tokens: TokenCache,
    /// API tokens made through `TokenService`, by hash: loaded at start by `run`, refreshed
    /// by every create and revoke.
    pub api_tokens: StoredTokens,
    /// Revoked node certificates, checked on connect and on every agent call.
    pub revocations: std::sync::Arc<crate::pki::Revocations>,
    /// The controller's first clock read; leases get a fresh grace from here after a restart.
    pub started_at: Timestamp,
    /// When leases last got a fresh grace: the start, or the moment the database accepted
    /// writes again after refusing them (heartbeats could not be recorded meanwhile).
    leases_fresh_from: Mutex<Timestamp>,
    /// The fleet outage the lease watchdog sees now (`lease.rs`), if any.
    fleet_outage: Mutex<Option<FleetOutage>>,
    /// Wakes the scheduler loop early (node connected, run started, job ended).
    scheduler_wake: Notify,
    /// Asks `replica::wake_loop` to wake the other replicas' schedulers too (PostgreSQL).
    replicas_wake: Notify,
    /// This process's id among the replicas, in the notifications it sends.
    pub replica_id: String,
    /// Bumped after every change a run watcher may care about.
    changes: watch::Sender<u64>,
    /// Runs whose gate must be evaluated again, each with the trace contexts of the spans that
    /// asked (empty with traces off; see `traces.rs`); drained by `gates::run_loop`.
    reevaluation_requests: Mutex<BTreeMap<RunId, Vec<SpanContext>>>,
    /// Wakes `gates::run_loop`.
    reevaluation_wake: Notify,
    /// Gates kept evaluated in memory.
    pub gate_cache: GateCache,
    /// Open streams and rate buckets per caller.
    pub limiter: std::sync::Arc<crate::limits::Limiter>,
    /// Heartbeats noted and not yet recorded (`heartbeats.rs` flushes them).
    pub heartbeats: crate::heartbeats::Heartbeats,
    /// Results waiting to be written together (`group_commit.rs`).
    pub group_commit: crate::group_commit::GroupCommit,
    /// Node reads of registrations and new streams, made together (`node_reads.rs`).
    pub node_reads: crate::node_reads::NodeReads,
    /// Job reads of results and acceptances, made together (`job_reads.rs`).
    pub job_reads: crate::job_reads::JobReads,
    /// Fleet telemetry folded into open buckets until `fleet_history::run_loop` writes them.
    pub fleet_rollup: Mutex<tollgate_domain::fleet_history::Rollup>,
    /// This controller's own metrics and each GPU's latest fleet telemetry, for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// When the lease leader last deleted fleet telemetry past its retention.
    pub fleet_pruned_at: Mutex<Option<Timestamp>>,
    /// Whether this replica led at the lease watchdog's last tick (`replica::Leader`); the
    /// loops that run once per deployment without holding the leadership read it.
    pub leading: std::sync::atomic::AtomicBool,
    /// Raised once when shutdown starts.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Builds the shared state; `run` does this, and so can tests that drive the loops directly.
    pub fn new(store: Store, config: ControllerConfig) -> Self {
        let started_at = config.clock.now();
        let limiter = std::sync::Arc::new(crate::limits::Limiter::new(config.limits));
        let config_history = config.fleet_history.clone();
        Self {
            store,
            config,
            sessions: Sessions::default(),
            tokens: TokenCache::default(),
            api_tokens: StoredTokens::default(),
            revocations: std::sync::Arc::default(),
            started_at,
            leases_fresh_from: Mutex::new(started_at),
            fleet_outage: Mutex::new(None),
            scheduler_wake: Notify::new(),
            replicas_wake: Notify::new(),
            replica_id: uuid::Uuid::new_v4().simple().to_string(),
            changes: watch::channel(0).0,
            reevaluation_requests: Mutex::default(),
            reevaluation_wake: Notify::new(),
            gate_cache: GateCache::default(),
            limiter,
            heartbeats: crate::heartbeats::Heartbeats::default(),
            group_commit: crate::group_commit::GroupCommit::default(),
            node_reads: crate::node_reads::NodeReads::default(),
            job_reads: crate::job_reads::JobReads::default(),
            fleet_rollup: Mutex::new(tollgate_domain::fleet_history::Rollup::new(
                config_history.clone(),
            )),
            metrics: crate::metrics::Metrics::new(),
            fleet_pruned_at: Mutex::new(None),
            leading: std::sync::atomic::AtomicBool::new(false),
            shutdown: watch::channel(false).0,
        }
    }

    /// Whether `node`'s agent holds a stream on some replica: here, or (on PostgreSQL, where
    /// replicas share the store) on one that recorded a heartbeat of it within
    /// [`Shared::LIVE_HEARTBEATS`] heartbeat intervals.
    pub fn agent_connected(
        &self,
        node: &tollgate_domain::NodeId,
        last_seen_at: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        let window = (self.store.backend() == "postgres")
            .then(|| self.config.heartbeat_interval * Self::LIVE_HEARTBEATS);
        tollgate_domain::node::agent_connected(
            self.sessions.is_connected(node),
            last_seen_at,
            window,
            now,
        )
    }

    /// Heartbeat intervals within which a heartbeat recorded by another replica shows the
    /// node's agent connected there.
    pub const LIVE_HEARTBEATS: u32 = 3;

    /// The current time, from the configured clock.
    pub fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    /// Heartbeats older than this count as made at this moment (see `lease.rs`).
    pub fn leases_fresh_from(&self) -> Timestamp {
        *self
            .leases_fresh_from
            .lock()
            .expect("the timestamp is never poisoned: nothing panics while holding it")
    }

    /// Gives every lease a fresh grace from `now`, as a restart does: heartbeats that came
    /// while the database refused writes were lost, not missing.
    pub fn refresh_leases(&self, now: Timestamp) {
        let mut fresh_from = self
            .leases_fresh_from
            .lock()
            .expect("the timestamp is never poisoned: nothing panics while holding it");
        *fresh_from = (*fresh_from).max(now);
    }

    /// The fleet outage seen now, if any.
    pub fn fleet_outage(&self) -> Option<FleetOutage> {
        *self
            .fleet_outage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what the lease watchdog sees; returns what it saw before.
    pub fn set_fleet_outage(&self, outage: Option<FleetOutage>) -> Option<FleetOutage> {
        std::mem::replace(
            &mut *self
                .fleet_outage
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            outage,
        )
    }

    /// Asks the scheduler to look at pending jobs now rather than at its next tick, here and
    /// (on PostgreSQL) on every other replica: the work may be for a node whose stream another
    /// replica holds.
    pub fn poke_scheduler(&self) {
        self.scheduler_wake.notify_one();
        self.replicas_wake.notify_one();
    }

    /// Wakes this replica's scheduler only (another replica made work).
    pub(crate) fn poke_scheduler_here(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Waits until the other replicas are to be woken (coalesced: many pokes while one
    /// notification is sent make one more).
    pub(crate) async fn replicas_wake_requested(&self) {
        self.replicas_wake.notified().await;
    }

    /// Asks for the gate that `run` feeds to be evaluated again soon (coalesced; see
    /// `gates::run_loop`). With traces on, the current span's context travels with the
    /// request: the evaluation's span is its child, or linked to it (`traces.rs`).
    pub fn request_reevaluation(&self, run: &RunId) {
        let context = crate::traces::current_context();
        let mut requests = self
            .reevaluation_requests
            .lock()
            .expect("the request set is never poisoned: nothing panics while holding it");
        let contexts = requests.entry(run.clone()).or_default();
        if let Some(context) = context
            && contexts.len() < crate::traces::MAX_LINKS
        {
            contexts.push(context);
        }
        drop(requests);
        self.reevaluation_wake.notify_one();
    }

    /// Waits until a re-evaluation is requested (`gates::run_loop`).
    pub(crate) async fn reevaluation_requested(&self) {
        self.reevaluation_wake.notified().await;
    }

    /// Takes every pending re-evaluation request, with the trace contexts that asked.
    pub(crate) fn take_reevaluation_requests(&self) -> BTreeMap<RunId, Vec<SpanContext>> {
        std::mem::take(
            &mut *self
                .reevaluation_requests
                .lock()
                .expect("the request set is never poisoned: nothing panics while holding it"),
        )
    }

    /// Tells run watchers that something changed.
    pub fn notify_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees every [`Shared::notify_changed`].
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver whose value turns true when shutdown starts.
    pub fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts shutdown: raises the flag and drops every agent session.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.sessions.close_all();
    }

    /// Waits until the scheduler is poked, `tick` passes, or shutdown starts; false on shutdown.
    pub(crate) async fn wait_for_work(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        tick: Duration,
    ) -> bool {
        tokio::select! {
            () = self.scheduler_wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return false,
        }
        !*shutdown.borrow()
    }
}

/// Waits until `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which only happens when everything stops.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
