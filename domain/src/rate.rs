//! Rate limits as token buckets: a caller may make `burst` calls at once, then `per_second`
//! calls a second on average. Time is an argument; the controller keeps one bucket per caller.

use crate::Timestamp;
use std::time::Duration;

/// How fast calls may come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Calls a second on average; 0 turns the limit off.
    pub per_second: u32,
    /// Calls allowed at once after a quiet spell (the bucket's size); at least 1 when on.
    pub burst: u32,
}

impl Rate {
    /// Whether calls are limited at all.
    pub fn is_on(&self) -> bool {
        self.per_second > 0
    }
}

/// One caller's bucket: the calls it may make now, as of `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Timestamp,
}

impl TokenBucket {
    /// A full bucket: a new caller may use the whole burst.
    pub fn full(rate: Rate, now: Timestamp) -> Self {
        Self {
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }

    /// Takes one call at `now`: `Ok` when allowed, else how long until one would be. A
    /// clock that went back refills nothing.
    pub fn take(&mut self, rate: Rate, now: Timestamp) -> Result<(), Duration> {
        if !rate.is_on() {
            return Ok(());
        }
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(
            missing / f64::from(rate.per_second),
        ))
    }

    /// Whether the bucket is full at `now` (a caller quiet that long can be forgotten).
    pub fn is_full(&self, rate: Rate, now: Timestamp) -> bool {
        let mut bucket = *self;
        bucket.refill(rate, now);
        bucket.tokens >= f64::from(rate.burst.max(1))
    }

    fn refill(&mut self, rate: Rate, now: Timestamp) {
        let elapsed = (now - self.at).to_std().unwrap_or(Duration::ZERO);
        let size = f64::from(rate.burst.max(1));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(rate.per_second)).min(size);
        if now > self.at {
            self.at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(ms: i64) -> Timestamp {
        chrono::Utc
            .timestamp_millis_opt(1_700_000_000_000 + ms)
            .unwrap()
    }

    const RATE: Rate = Rate {
        per_second: 2,
        burst: 3,
    };

    #[test]
    fn a_burst_is_allowed_then_calls_wait_for_the_refill() {
        let mut bucket = TokenBucket::full(RATE, at(0));
        for _ in 0..3 {
            assert_eq!(bucket.take(RATE, at(0)), Ok(()));
        }
        assert_eq!(bucket.take(RATE, at(0)), Err(Duration::from_millis(500)));
        assert_eq!(bucket.take(RATE, at(250)), Err(Duration::from_millis(250)));
        assert_eq!(bucket.take(RATE, at(500)), Ok(()));
        assert!(bucket.take(RATE, at(500)).is_err());
    }

    #[test]
    fn a_quiet_caller_refills_up_to_the_burst_only() {
        let mut bucket = TokenBucket::full(RATE, at(0));
        for _ in 0..3 {
            bucket.take(RATE, at(0)).unwrap();
        }
        assert!(!bucket.is_full(RATE, at(1000)));
        assert!(bucket.is_full(RATE, at(60_000)));
        for _ in 0..3 {
            assert_eq!(bucket.take(RATE, at(60_000)), Ok(()));
        }
        assert!(bucket.take(RATE, at(60_000)).is_err());
    }

    #[test]
    fn a_clock_going_back_refills_nothing_and_off_allows_everything() {
        let mut bucket = TokenBucket::full(RATE, at(10_000));
        for _ in 0..3 {
            bucket.take(RATE, at(10_000)).unwrap();
        }
        assert!(bucket.take(RATE, at(0)).is_err());
        let off = Rate {
            per_second: 0,
            burst: 0,
        };
        for _ in 0..100 {
            assert_eq!(bucket.take(off, at(0)), Ok(()));
        }
    }
}
