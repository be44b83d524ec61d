//! Per-identity limits: how many long-lived streams one caller may hold open, and how fast it
//! may make manager calls (a token bucket each, `tollgate_domain::rate`). The gRPC edge
//! (`grpc/limits.rs`) says who the caller is and asks here; refusals are [`LimitError`]s,
//! which `grpc/status.rs` maps to `RESOURCE_EXHAUSTED`.
//!
//! Ownership: `Shared` holds the one [`Limiter`]; a [`StreamPermit`] lives inside the response
//! stream it admitted and gives its slot back when the stream is dropped (the caller closed
//! it, or it ended).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_domain::Timestamp;
use tollgate_domain::rate::{Rate, TokenBucket};

/// Default of `--max-streams-per-identity`.
pub const DEFAULT_STREAMS_PER_IDENTITY: usize = 16;
/// Default of `--rate-limit` (manager calls a second per identity).
pub const DEFAULT_RATE_PER_SECOND: u32 = 50;
/// Default of `--rate-burst`.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// Beyond this many remembered callers, those whose bucket refilled are forgotten.
const REMEMBERED_CALLERS: usize = 10_000;

/// The limits, from flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Streams (`WatchRun`, `StreamReport`; an agent's `Connect`, `PushTelemetry`) one
    /// identity may hold open at once; 0 for no limit.
    pub streams_per_identity: usize,
    /// Manager calls per identity.
    pub rate: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            streams_per_identity: DEFAULT_STREAMS_PER_IDENTITY,
            rate: Rate {
                per_second: DEFAULT_RATE_PER_SECOND,
                burst: DEFAULT_RATE_BURST,
            },
        }
    }
}

/// Who a call counts against: an API token, a node, or (anonymous manager calls) the peer's
/// IP address. Built by `grpc::limits::identity_of`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

impl Identity {
    /// A manager call made with the API token named `name`.
    pub fn api_token(name: &str) -> Self {
        Self(format!("token {name}"))
    }

    /// An agent call of node `name`.
    pub fn node(name: &str) -> Self {
        Self(format!("node {name}"))
    }

    /// An anonymous call from `peer` (every port of one host counts as one caller).
    pub fn peer(peer: Option<std::net::IpAddr>) -> Self {
        match peer {
            Some(ip) => Self(format!("anonymous caller {ip}")),
            None => Self("anonymous caller (address unknown)".to_owned()),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A call refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The identity holds as many streams as it may.
    #[error(
        "{identity} already has {limit} open streams, the limit (--max-streams-per-identity); \
         close a WatchRun, StreamReport or agent stream it no longer reads, then open this {rpc} again"
    )]
    TooManyStreams {
        /// Who.
        identity: Identity,
        /// The limit.
        limit: usize,
        /// The refused call.
        rpc: &'static str,
    },
    /// The identity called faster than its rate.
    #[error(
        "{identity} is over the rate limit of {per_second} calls a second (bursts of {burst}; \
         --rate-limit, --rate-burst); retry after {retry_after_ms} ms and slow down"
    )]
    RateLimited {
        /// Who.
        identity: Identity,
        /// The rate.
        per_second: u32,
        /// The burst.
        burst: u32,
        /// When a call would be allowed again.
        retry_after_ms: u64,
    },
}

impl LimitError {
    /// How long to wait before retrying, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after_ms, .. } => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            Self::TooManyStreams { .. } => None,
        }
    }
}

/// Open streams and rate buckets by identity.
#[derive(Debug)]
pub struct Limiter {
    config: LimitsConfig,
    /// Open streams per identity; an entry goes when its count reaches 0.
    streams: Mutex<HashMap<Identity, usize>>,
    buckets: Mutex<HashMap<Identity, TokenBucket>>,
}

impl Limiter {
    /// A limiter with nothing open and every bucket full.
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            streams: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// The limits it applies.
    pub fn config(&self) -> LimitsConfig {
        self.config
    }

    /// Admits one more stream for `identity`, or refuses it when the identity holds the limit.
    pub fn open_stream(
        self: &Arc<Self>,
        identity: Identity,
        rpc: &'static str,
    ) -> Result<StreamPermit, LimitError> {
        let limit = self.config.streams_per_identity;
        let mut streams = self
            .streams
            .lock()
            .expect("stream counts are never poisoned: no panics while held");
        let open = streams.entry(identity.clone()).or_insert(0);
        if limit > 0 && *open >= limit {
            return Err(LimitError::TooManyStreams {
                identity,
                limit,
                rpc,
            });
        }
        *open += 1;
        Ok(StreamPermit {
            limiter: Arc::clone(self),
            identity,
        })
    }

    /// How many streams `identity` holds open.
    pub fn open_streams(&self, identity: &Identity) -> usize {
        self.streams
            .lock()
            .expect("stream counts are never poisoned: no panics while held")
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    /// Takes one manager call of `identity` at `now` from its bucket.
    pub fn admit(&self, identity: &Identity, now: Timestamp) -> Result<(), LimitError> {
        let rate = self.config.rate;
        if !rate.is_on() {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .expect("rate buckets are never poisoned: no panics while held");
        if buckets.len() >= REMEMBERED_CALLERS && !buckets.contains_key(identity) {
            buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        }
        let bucket = buckets
            .entry(identity.clone())
            .or_insert_with(|| TokenBucket::full(rate, now));
        bucket
            .take(rate, now)
            .map_err(|wait| LimitError::RateLimited {
                identity: identity.clone(),
                per_second: rate.per_second,
                burst: rate.burst,
                // Rounded up, so retrying after it is never too early.
                retry_after_ms: u64::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u64::MAX),
            })
    }

    fn close_stream(&self, identity: &Identity) {
        let mut streams = self
            .streams
            .lock()
            .expect("stream counts are never poisoned: no panics while held");
        if let Some(open) = streams.get_mut(identity) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(identity);
            }
        }
    }
}

/// One open stream's slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<Limiter>,
    identity: Identity,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.limiter.close_stream(&self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(streams: usize, per_second: u32, burst: u32) -> Arc<Limiter> {
        Arc::new(Limiter::new(LimitsConfig {
            streams_per_identity: streams,
            rate: Rate { per_second, burst },
        }))
    }

    #[test]
    fn streams_are_counted_per_identity_and_given_back_on_drop() {
        let limiter = limiter(2, 0, 0);
        let alice = Identity::api_token("alice");
        let first = limiter.open_stream(alice.clone(), "WatchRun").unwrap();
        let _second = limiter.open_stream(alice.clone(), "WatchRun").unwrap();
        let refused = limiter.open_stream(alice.clone(), "WatchRun").unwrap_err();
        assert!(
            refused.to_string().contains("already has 2 open streams"),
            "{refused}"
        );
        // Another identity has its own slots.
        let _bob = limiter
            .open_stream(Identity::api_token("bob"), "WatchRun")
            .unwrap();
        drop(first);
        assert_eq!(limiter.open_streams(&alice), 1);
        let _third = limiter.open_stream(alice, "StreamReport").unwrap();
    }

    #[test]
    fn calls_over_the_rate_are_refused_with_the_time_to_wait() {
        let limiter = limiter(0, 10, 2);
        let now = chrono::DateTime::UNIX_EPOCH;
        let peer = Identity::peer("10.0.0.1".parse().ok());
        limiter.admit(&peer, now).unwrap();
        limiter.admit(&peer, now).unwrap();
        let refused = limiter.admit(&peer, now).unwrap_err();
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(100)));
        assert!(
            refused.to_string().contains("retry after 100 ms"),
            "{refused}"
        );
        limiter
            .admit(&Identity::peer("10.0.0.2".parse().ok()), now)
            .unwrap();
        limiter
            .admit(&peer, now + chrono::Duration::milliseconds(100))
            .unwrap();
    }
}
