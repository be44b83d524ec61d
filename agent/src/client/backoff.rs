//! The delays between attempts to reach the controller: exponential, jittered so that a fleet
//! whose controller came back does not reconnect all at one instant, and capped, jitter
//! included, at [`RECONNECT_BACKOFF_MAX`], the number the controller's grace after a start is
//! built on (see `tollgate_domain::lease`). The delays come from `backon`; the agent sleeps in
//! its own select loops, so it can stop at shutdown in the middle of a delay.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;
use tollgate_domain::lease::RECONNECT_BACKOFF_MAX;

/// The first delay before jitter; each later one doubles it, up to half the cap.
const FIRST_DELAY: Duration = Duration::from_millis(200);

/// The delays of one series of failed attempts; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub(super) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// A fresh series, jittered from a random seed of its own.
    pub(super) fn new() -> Self {
        // Jitter adds up to the delay itself, so half the cap before jitter keeps every delay
        // under the cap after it.
        let builder = ExponentialBuilder::new()
            .with_min_delay(FIRST_DELAY)
            .with_max_delay(RECONNECT_BACKOFF_MAX / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
        }
    }

    /// Starts the series again from the first delay.
    pub(super) fn reset(&mut self) {
        self.delays = self.builder.build();
    }

    /// The delay before the next session after one ended: a session whose stream opened was a
    /// success, so the series starts again from the first delay; one that never got that far
    /// waits longer than the last.
    pub(super) fn after_session(&mut self, stream_opened: bool) -> Duration {
        if stream_opened {
            self.reset();
        }
        self.next_delay()
    }

    /// The delay before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        // The series has no end (`without_max_times`); the cap also guards against float
        // rounding in the jitter.
        self.delays
            .next()
            .unwrap_or(RECONNECT_BACKOFF_MAX)
            .min(RECONNECT_BACKOFF_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap() {
        for _ in 0..100 {
            let mut backoff = Backoff::new();
            let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
            for (step, delay) in delays.iter().enumerate() {
                let base = FIRST_DELAY * 2u32.pow(u32::try_from(step).expect("small"));
                let base = base.min(RECONNECT_BACKOFF_MAX / 2);
                assert!(
                    *delay >= base && *delay < base * 2,
                    "delay {step} is {delay:?}, outside [{base:?}, {:?}): {delays:?}",
                    base * 2
                );
            }
            // Below the cap the jittered ranges do not overlap, so the delays grow strictly.
            assert!(
                delays[..4].windows(2).all(|pair| pair[0] < pair[1]),
                "{delays:?}"
            );
        }
    }

    #[test]
    fn delays_never_pass_the_cap_and_stay_near_it() {
        let mut backoff = Backoff::new();
        for _ in 0..6 {
            backoff.next_delay();
        }
        for _ in 0..200 {
            let delay = backoff.next_delay();
            assert!(delay <= RECONNECT_BACKOFF_MAX, "{delay:?}");
            assert!(delay >= RECONNECT_BACKOFF_MAX / 2, "{delay:?}");
        }
    }

    #[test]
    fn agents_at_the_cap_do_not_reconnect_at_the_same_instant() {
        let at_cap: Vec<Duration> = (0..20)
            .map(|_| {
                let mut backoff = Backoff::new();
                (0..10)
                    .map(|_| backoff.next_delay())
                    .last()
                    .expect("ten delays")
            })
            .collect();
        let mut distinct = at_cap.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() >= 10,
            "twenty agents wait only {} distinct delays: {at_cap:?}",
            distinct.len()
        );
    }

    #[test]
    fn a_session_whose_stream_opened_starts_the_delays_again() {
        let mut backoff = Backoff::new();
        let failed: Vec<Duration> = (0..4).map(|_| backoff.after_session(false)).collect();
        assert!(
            failed.windows(2).all(|pair| pair[0] < pair[1]),
            "{failed:?}"
        );
        let after_success = backoff.after_session(true);
        assert!(
            after_success >= FIRST_DELAY && after_success < FIRST_DELAY * 2,
            "{after_success:?}"
        );
        let next_failure = backoff.after_session(false);
        assert!(next_failure >= FIRST_DELAY * 2, "{next_failure:?}");
    }

    #[test]
    fn a_reset_starts_again_from_the_first_delay() {
        let mut backoff = Backoff::new();
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= RECONNECT_BACKOFF_MAX / 2);
        backoff.reset();
        let first = backoff.next_delay();
        assert!(first >= FIRST_DELAY && first < FIRST_DELAY * 2, "{first:?}");
    }
}
