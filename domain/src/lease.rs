//! How long a node's lease lasts without a heartbeat, and the one number the agent and the
//! controller must agree on for it: how long an agent may wait before it reconnects.
//!
//! An agent that lost its controller reconnects with a jittered exponential backoff capped at
//! [`RECONNECT_BACKOFF_MAX`]. After a controller start (or after leases were refreshed), a
//! lease not yet renewed gets [`LeaseGrace::after_start`], never shorter than that cap plus one
//! heartbeat interval, so an agent that reconnects at its cap renews its lease in time however
//! short `--lease-grace` is.

use std::time::Duration;

/// The longest an agent waits between two attempts to reach the controller, jitter included.
/// The agent's backoff never exceeds it; the controller's grace after a start is built on it.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a node may stay silent before its lease runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrace {
    /// For a lease renewed since the controller started: the configured lease grace.
    pub renewed: chrono::Duration,
    /// For a lease not renewed since the controller started: the configured grace, but at
    /// least what an agent reconnecting at its backoff cap needs to send its first heartbeat.
    pub after_start: chrono::Duration,
}

impl LeaseGrace {
    /// Nodes heard at or after this moment are neither silent ([`silence`]) nor expired
    /// ([`crate::scheduler::expired_leases`]) at `now`, whatever the fresh grace: half the
    /// renewed grace before `now`. The lease watchdog reads only the nodes heard before it.
    pub fn quiet_since(&self, now: crate::Timestamp) -> crate::Timestamp {
        now - self.renewed / 2
    }

    /// The graces for a controller configured with `lease_grace` and `heartbeat_interval`.
    pub fn new(lease_grace: Duration, heartbeat_interval: Duration) -> Self {
        let reconnect = RECONNECT_BACKOFF_MAX.saturating_add(heartbeat_interval);
        Self {
            renewed: to_chrono(lease_grace),
            after_start: to_chrono(lease_grace.max(reconnect)),
        }
    }
}

/// Whether a heartbeat that arrived at `noted_at` and is judged only `now` may bring an
/// `unreachable` node back: not when it waited longer than the lease grace (a flush held up by
/// the database, a clock set forward), since it may predate the silence that made the node
/// unreachable. One judged within the grace is the agent's word that it is there now.
pub fn revives(noted_at: crate::Timestamp, now: crate::Timestamp, lease_grace: Duration) -> bool {
    (now - noted_at)
        .to_std()
        .map_or(true, |age| age <= lease_grace)
}

/// When the fleet's silence means an outage (of this controller, its database or the network)
/// rather than dead nodes: a large share of the watched nodes silent at once. While it lasts
/// no lease expires, so that a switch or controller outage never turns into hundreds of lost
/// jobs; once heartbeats return every lease gets a fresh grace, and a node that stays silent
/// after that expires as ever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutagePolicy {
    /// The share of watched nodes (0 to 1) that, silent at once, is an outage; above 1 never.
    pub fraction: f64,
    /// The fewest watched nodes for the rule to apply: in a small lab a few dead nodes are a
    /// large share.
    pub min_nodes: usize,
}

impl Default for OutagePolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            min_nodes: 10,
        }
    }
}

/// How many of the watched nodes are silent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// Nodes without a heartbeat for longer than half their grace.
    pub silent: usize,
    /// Nodes whose lease is watched.
    pub watched: usize,
}

impl OutagePolicy {
    /// Whether `silence` is an outage under this policy.
    pub fn is_outage(&self, silence: Silence) -> bool {
        silence.watched > 0
            && silence.watched >= self.min_nodes
            && silence.silent as f64 >= self.fraction * silence.watched as f64
    }
}

/// The fleet's silence now: a node is silent when it sent no heartbeat for longer than half
/// its grace (see [`crate::scheduler::expired_leases`] for which grace and from when). Nodes
/// that went silent together (a switch, a controller) are all silent by the time the first
/// of their leases would expire: their last heartbeats lie at most an interval apart.
///
/// `quiet` holds the last heartbeats of the watched nodes not heard since
/// [`LeaseGrace::quiet_since`] (more may be given: they count only if silent); `n_watched`
/// counts every watched node.
pub fn silence(
    quiet: &[(crate::NodeId, Option<crate::Timestamp>)],
    n_watched: usize,
    fresh_from: crate::Timestamp,
    grace: LeaseGrace,
    now: crate::Timestamp,
) -> Silence {
    let silent = quiet
        .iter()
        .filter(|(_, seen)| match seen {
            Some(seen) if *seen >= fresh_from => now - *seen > grace.renewed / 2,
            _ => now - fresh_from > grace.after_start / 2,
        })
        .count();
    Silence {
        silent,
        watched: n_watched.max(quiet.len()),
    }
}

/// Durations past chrono's range (about 292 billion years) count as forever.
fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    #[test]
    fn only_a_heartbeat_judged_within_the_grace_revives_a_node() {
        let grace = Duration::from_secs(10);
        assert!(revives(at(18), at(28), grace));
        assert!(!revives(at(18), at(29), grace));
        // A heartbeat stamped after now (clocks apart) is fresh.
        assert!(revives(at(30), at(29), grace));
    }

    #[test]
    fn half_a_large_fleet_silent_at_once_is_an_outage_and_a_few_dead_nodes_are_not() {
        let grace = LeaseGrace::new(Duration::from_secs(10), Duration::from_secs(2));
        let policy = OutagePolicy::default();
        let fleet = |n_silent: usize, n: usize| -> Vec<(crate::NodeId, Option<crate::Timestamp>)> {
            (0..n)
                .map(|i| {
                    let seen = if i < n_silent { at(100) } else { at(109) };
                    (crate::NodeId::new(format!("n{i}")), Some(seen))
                })
                .collect()
        };
        // At t=110 the silent ones were last heard 10 s ago: more than half the grace.
        let half = silence(&fleet(10, 20), 20, at(0), grace, at(110));
        assert_eq!(
            half,
            Silence {
                silent: 10,
                watched: 20
            }
        );
        assert!(policy.is_outage(half));
        assert!(!policy.is_outage(silence(&fleet(9, 20), 20, at(0), grace, at(110))));
        // A small lab: every node of three silent is still three dead nodes.
        assert!(!policy.is_outage(silence(&fleet(3, 3), 3, at(0), grace, at(110))));
        // Heard within half the grace: not silent yet.
        assert_eq!(silence(&fleet(20, 20), 20, at(0), grace, at(104)).silent, 0);
        // Never heard since the start: silent after half the grace after a start.
        let unseen = vec![(crate::NodeId::new("n"), None)];
        assert_eq!(silence(&unseen, 1, at(100), grace, at(104)).silent, 0);
        assert_eq!(silence(&unseen, 1, at(100), grace, at(106)).silent, 1);
        // Above 1: never an outage.
        let never = OutagePolicy {
            fraction: 1.5,
            ..policy
        };
        assert!(!never.is_outage(silence(&fleet(20, 20), 20, at(0), grace, at(200))));
    }

    proptest::proptest! {
        /// The watchdog reads only the nodes not heard since `quiet_since`: the leases it
        /// expires and the silence it sees are those of the whole fleet.
        #[test]
        fn the_quiet_nodes_decide_what_the_whole_fleet_decides(
            seen in proptest::collection::vec(proptest::option::of(0i64..200_000), 0..40),
            fresh_from in 0i64..200_000,
            now in 0i64..250_000,
            grace_ms in 1u64..60_000,
            interval_ms in 1u64..20_000,
        ) {
            let ms = |ms: i64| at(0) + chrono::Duration::milliseconds(ms);
            let fleet: Vec<(crate::NodeId, Option<crate::Timestamp>)> = seen
                .iter()
                .enumerate()
                .map(|(i, seen)| (crate::NodeId::new(format!("n{i}")), seen.map(ms)))
                .collect();
            let grace = LeaseGrace::new(
                Duration::from_millis(grace_ms),
                Duration::from_millis(interval_ms),
            );
            let (fresh_from, now) = (ms(fresh_from), ms(now));
            let since = grace.quiet_since(now);
            let quiet: Vec<_> = fleet
                .iter()
                .filter(|(_, seen)| seen.is_none_or(|seen| seen < since))
                .cloned()
                .collect();
            proptest::prop_assert_eq!(
                crate::scheduler::expired_leases(&quiet, fresh_from, grace, now),
                crate::scheduler::expired_leases(&fleet, fresh_from, grace, now)
            );
            proptest::prop_assert_eq!(
                silence(&quiet, fleet.len(), fresh_from, grace, now),
                silence(&fleet, fleet.len(), fresh_from, grace, now)
            );
        }
    }

    #[test]
    fn the_grace_after_a_start_covers_a_reconnect_at_the_backoff_cap_plus_a_heartbeat() {
        let grace = LeaseGrace::new(Duration::from_secs(4), Duration::from_secs(2));
        assert_eq!(grace.renewed, chrono::Duration::seconds(4));
        assert_eq!(grace.after_start, chrono::Duration::seconds(7));
        let long = LeaseGrace::new(Duration::from_secs(30), Duration::from_secs(2));
        assert_eq!(long.after_start, chrono::Duration::seconds(30));
    }
}
