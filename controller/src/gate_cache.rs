//! The gates the controller keeps evaluated in memory. Only the container lives here, below
//! the shared state that holds it; `gates.rs` fills and reads it while evaluating.

use std::collections::HashMap;
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_domain::gate::{Evidence, GateState};

/// How many gates (release and milestone) the controller keeps evaluated in memory; the
/// least recently used one is dropped beyond this.
pub(crate) const CACHED_GATES: usize = 16;

/// The gates the controller keeps evaluated in memory: per release and milestone, the
/// evidence as last read and its [`GateState`]. A new evaluation reads only the jobs that
/// changed since (see `Store::refresh_evidence`) and recomputes only their part of the
/// decision, so a gate over 100,000 results decides within milliseconds of the last result.
///
/// Evaluations queue on one lock; each reads the store afresh, so the cache never decides on
/// evidence older than the store's.
#[derive(Default)]
pub struct GateCache {
    pub(crate) entries: tokio::sync::Mutex<HashMap<(ReleaseId, String), CachedGate>>,
}

/// One gate kept evaluated.
pub(crate) struct CachedGate {
    /// The policy version the state was built for; another version builds anew.
    pub(crate) policy_version: String,
    /// The evidence as last read, each result thinned to what the rules read. Not shared past
    /// the lock: a decision takes its inputs from it under the lock, so a refresh updates it in
    /// place.
    pub(crate) evidence: Arc<Evidence>,
    /// Every rule's running parts over `evidence`.
    pub(crate) state: GateState,
    /// When it was last used, in evaluations; the smallest is dropped first.
    pub(crate) last_used: u64,
}

impl std::fmt::Debug for GateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateCache").finish_non_exhaustive()
    }
}
