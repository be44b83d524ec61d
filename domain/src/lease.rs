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
    /// The graces for a controller configured with `lease_grace` and `heartbeat_interval`.
    pub fn new(lease_grace: Duration, heartbeat_interval: Duration) -> Self {
        let reconnect = RECONNECT_BACKOFF_MAX.saturating_add(heartbeat_interval);
        Self {
            renewed: to_chrono(lease_grace),
            after_start: to_chrono(lease_grace.max(reconnect)),
        }
    }
}

/// Durations past chrono's range (about 292 billion years) count as forever.
fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_after_a_start_covers_a_reconnect_at_the_backoff_cap_plus_a_heartbeat() {
        let grace = LeaseGrace::new(Duration::from_secs(4), Duration::from_secs(2));
        assert_eq!(grace.renewed, chrono::Duration::seconds(4));
        assert_eq!(grace.after_start, chrono::Duration::seconds(7));
        let long = LeaseGrace::new(Duration::from_secs(30), Duration::from_secs(2));
        assert_eq!(long.after_start, chrono::Duration::seconds(30));
    }
}
