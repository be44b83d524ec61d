//! Fleet telemetry history: what the controller keeps of the samples agents stream while no
//! step runs (`PushTelemetry`). Per node, GPU and tier, one bucket per tier width holds each
//! field's smallest, mean and largest sample and the sample count; by default 10 s buckets
//! kept for a day and 1 min buckets kept for 30 days ([`History::default`], written
//! `10s:1d,1m:30d`).
//!
//! Samples are folded into every tier's open bucket in memory ([`Rollup`]); a bucket is
//! written once it closed (its end plus a lateness allowance passed), so the store sees about
//! one row per bucket. A sample that arrives after its bucket was written (an agent's buffer
//! delivered after an outage) makes a second row for the same bucket; [`merge`] folds rows of
//! one bucket together when they are read, so nothing is overwritten and nothing counted
//! twice. Samples older than a tier's retention are not kept in that tier; the controller
//! deletes what falls out of retention ([`History::cutoff`]).

use crate::telemetry::Field;
use crate::{NodeId, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// Most tiers a history holds.
pub const MAX_TIERS: usize = 4;
/// Narrowest bucket.
pub const MIN_RESOLUTION: Duration = Duration::from_secs(1);
/// Longest retention of any tier.
pub const MAX_RETENTION: Duration = Duration::from_secs(400 * 86_400);
/// A sample stamped further ahead of the controller's clock than this is refused (a node's
/// clock is wrong); one older than the longest retention is of no tier.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(300);

/// One tier: buckets `resolution` wide, kept for `retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Width of a bucket.
    pub resolution: Duration,
    /// How long its buckets are kept.
    pub retention: Duration,
}

impl Tier {
    /// Width in whole seconds, as stored.
    pub fn resolution_s(&self) -> u32 {
        u32::try_from(self.resolution.as_secs()).unwrap_or(u32::MAX)
    }
}

/// The tiers of the history, finest first; validated by [`History::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    tiers: Vec<Tier>,
}

impl Default for History {
    /// 10 s buckets for a day, 1 min buckets for 30 days.
    fn default() -> Self {
        Self {
            tiers: vec![
                Tier {
                    resolution: Duration::from_secs(10),
                    retention: Duration::from_secs(86_400),
                },
                Tier {
                    resolution: Duration::from_secs(60),
                    retention: Duration::from_secs(30 * 86_400),
                },
            ],
        }
    }
}

impl History {
    /// Checks `tiers`: one to [`MAX_TIERS`], finest first; each resolution whole seconds, at
    /// least [`MIN_RESOLUTION`], and a multiple of the one before; each retention at least
    /// ten buckets, at most [`MAX_RETENTION`], and longer than the one before. Every problem
    /// is named.
    pub fn new(tiers: Vec<Tier>) -> Result<Self, String> {
        let mut problems = Vec::new();
        if tiers.is_empty() || tiers.len() > MAX_TIERS {
            problems.push(format!(
                "give 1 to {MAX_TIERS} tiers (RESOLUTION:RETENTION, comma-separated), not {}",
                tiers.len()
            ));
        }
        for (idx, tier) in tiers.iter().enumerate() {
            let name = format!(
                "tier {} ({})",
                idx + 1,
                format_tier(tier.resolution, tier.retention)
            );
            if tier.resolution < MIN_RESOLUTION || tier.resolution.subsec_nanos() != 0 {
                problems.push(format!(
                    "{name}: the resolution must be whole seconds, at least 1s"
                ));
            }
            if tier.retention > MAX_RETENTION {
                problems.push(format!("{name}: keep at most 400d"));
            }
            if tier.retention < tier.resolution * 10 {
                problems.push(format!("{name}: keep at least ten buckets"));
            }
            if let Some(finer) = idx.checked_sub(1).map(|before| tiers[before]) {
                let divides = finer.resolution.as_secs() > 0
                    && tier.resolution.as_secs() % finer.resolution.as_secs() == 0;
                if tier.resolution <= finer.resolution || !divides {
                    problems.push(format!(
                        "{name}: its resolution must be a multiple of tier {idx}'s, and wider"
                    ));
                }
                if tier.retention <= finer.retention {
                    problems.push(format!(
                        "{name}: keep it longer than tier {idx} (a wider tier is for longer)"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { tiers })
        } else {
            Err(problems.join("; "))
        }
    }

    /// Reads `10s:1d,1m:30d`: tiers, finest first, each RESOLUTION:RETENTION in the
    /// durations plans use.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tiers = Vec::new();
        for part in text.split(',') {
            let Some((resolution, retention)) = part.trim().split_once(':') else {
                return Err(format!(
                    "'{}' is not a tier: write RESOLUTION:RETENTION, for example 10s:1d,1m:30d",
                    part.trim()
                ));
            };
            tiers.push(Tier {
                resolution: crate::spec::parse_duration(resolution)?,
                retention: crate::spec::parse_duration(retention)?,
            });
        }
        Self::new(tiers)
    }

    /// The tiers, finest first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier `resolution_s` seconds wide, if the history has one.
    pub fn tier(&self, resolution_s: u32) -> Option<Tier> {
        self.tiers
            .iter()
            .copied()
            .find(|tier| tier.resolution_s() == resolution_s)
    }

    /// The finest tier that still holds buckets as old as `since`: what a chart from `since`
    /// to now reads. The widest tier when none reaches that far back.
    pub fn tier_for(&self, since: Timestamp, now: Timestamp) -> Tier {
        let age = (now - since).to_std().unwrap_or_default();
        self.tiers
            .iter()
            .copied()
            .find(|tier| tier.retention >= age)
            .unwrap_or(self.tiers[self.tiers.len() - 1])
    }

    /// Buckets of `tier` starting before this are out of retention at `now`.
    pub fn cutoff(tier: Tier, now: Timestamp) -> Timestamp {
        now - chrono::Duration::from_std(tier.retention).unwrap_or(chrono::Duration::MAX)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .tiers
            .iter()
            .map(|tier| format_tier(tier.resolution, tier.retention))
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn format_tier(resolution: Duration, retention: Duration) -> String {
    format!(
        "{}:{}",
        crate::spec::format_duration(resolution),
        crate::spec::format_duration(retention)
    )
}

/// One field's samples in one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Sum of the samples (the mean is `sum / samples`).
    pub sum: f64,
    /// Samples.
    pub samples: u32,
}

impl Stat {
    /// One sample.
    pub fn of(value: f64) -> Self {
        Self {
            min: value,
            max: value,
            sum: value,
            samples: 1,
        }
    }

    /// The mean of the samples.
    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.samples.max(1))
    }

    /// Folds `other` (samples of the same field and bucket) into this one.
    pub fn merge(&mut self, other: &Stat) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.samples = self.samples.saturating_add(other.samples);
    }
}

/// One GPU's fields over one bucket of one tier.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// The node.
    pub node: NodeId,
    /// NVML device index.
    pub gpu_index: u32,
    /// The tier's width, seconds.
    pub resolution_s: u32,
    /// Start of the bucket (a multiple of its width since the Unix epoch).
    pub start: Timestamp,
    /// Each field's samples.
    pub fields: BTreeMap<Field, Stat>,
}

impl Bucket {
    /// Folds `other` (the same node, GPU, tier and start) into this one.
    pub fn merge(&mut self, other: &Bucket) {
        for (field, stat) in &other.fields {
            self.fields
                .entry(*field)
                .and_modify(|mine| mine.merge(stat))
                .or_insert(*stat);
        }
    }
}

/// Folds rows of the same bucket (a late sample's second row) into one; keeps the order of
/// first appearance.
pub fn merge(rows: Vec<Bucket>) -> Vec<Bucket> {
    let mut merged: Vec<Bucket> = Vec::with_capacity(rows.len());
    let mut index: HashMap<(NodeId, u32, u32, Timestamp), usize> = HashMap::new();
    for row in rows {
        let key = (row.node.clone(), row.gpu_index, row.resolution_s, row.start);
        match index.get(&key) {
            Some(&at) => merged[at].merge(&row),
            None => {
                index.insert(key, merged.len());
                merged.push(row);
            }
        }
    }
    merged
}

/// Why a sample was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Stamped more than [`MAX_CLOCK_AHEAD`] after the controller's clock.
    Future,
    /// Older than every tier's retention.
    TooOld,
}

/// One open bucket's fields: a slot per field, in [`Field::ALL`]'s order, a slot with no
/// sample yet holding `samples: 0`. Folding a sample indexes its slots instead of searching a
/// map (the fold is most of what the controller adds to decoding a `PushTelemetry` batch:
/// `ingest-bench`, BENCHMARKS.md). Kept boxed in the node's table, so that the table's spare
/// capacity costs a pointer a slot, not a bucket.
#[derive(Debug, Clone)]
struct OpenFields([Stat; Field::ALL.len()]);

impl Default for OpenFields {
    fn default() -> Self {
        const NONE: Stat = Stat {
            min: 0.0,
            max: 0.0,
            sum: 0.0,
            samples: 0,
        };
        Self([NONE; Field::ALL.len()])
    }
}

impl OpenFields {
    fn fold(&mut self, field: Field, stat: &Stat) {
        let mine = &mut self.0[field.index()];
        if mine.samples == 0 {
            *mine = *stat;
        } else {
            mine.merge(stat);
        }
    }

    /// The fields that hold a value; `None` when none does.
    fn into_fields(self) -> Option<BTreeMap<Field, Stat>> {
        let fields: BTreeMap<Field, Stat> = Field::ALL
            .into_iter()
            .zip(self.0)
            .filter(|(_, stat)| stat.samples > 0)
            .collect();
        (!fields.is_empty()).then_some(fields)
    }
}

/// An open bucket of one node: GPU, tier index, bucket number.
type OpenKey = (u32, usize, i64);

/// Samples folded into each tier's open buckets, in memory, until they are written.
#[derive(Debug, Clone)]
pub struct Rollup {
    history: History,
    /// Node → its open buckets. By node first so that folding a sample looks the node up by
    /// reference, without copying its name.
    open: HashMap<NodeId, HashMap<OpenKey, Box<OpenFields>>>,
    /// Open buckets, all nodes together.
    n_open: usize,
}

impl Rollup {
    /// Nothing open yet.
    pub fn new(history: History) -> Self {
        Self {
            history,
            open: HashMap::new(),
            n_open: 0,
        }
    }

    /// The tiers it folds samples into.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Buckets open (node, GPU and tier each).
    pub fn open_buckets(&self) -> usize {
        self.n_open
    }

    /// The open buckets of `node` in `open`, an empty table if it had none.
    fn node_buckets_in<'a>(
        open: &'a mut HashMap<NodeId, HashMap<OpenKey, Box<OpenFields>>>,
        node: &NodeId,
    ) -> &'a mut HashMap<OpenKey, Box<OpenFields>> {
        if !open.contains_key(node) {
            open.insert(node.clone(), HashMap::new());
        }
        open.get_mut(node)
            .expect("the node's buckets were just inserted")
    }

    /// The open bucket `key` of a node's `buckets`, opened empty if it was not.
    fn open_bucket<'a>(
        buckets: &'a mut HashMap<OpenKey, Box<OpenFields>>,
        n_open: &mut usize,
        key: OpenKey,
    ) -> &'a mut OpenFields {
        buckets.entry(key).or_insert_with(|| {
            *n_open += 1;
            Box::default()
        })
    }

    /// Folds one GPU's sample taken `at` into every tier that keeps it at `now`. Values that
    /// are not finite are skipped (a counter NVML could not read), and so is the whole sample
    /// when it is stamped in the future or is older than every retention.
    pub fn add(
        &mut self,
        node: &NodeId,
        gpu_index: u32,
        at: Timestamp,
        values: &[(Field, f64)],
        now: Timestamp,
    ) -> Result<(), Refused> {
        let ahead = chrono::Duration::from_std(MAX_CLOCK_AHEAD).unwrap_or(chrono::Duration::MAX);
        if at > now + ahead {
            return Err(Refused::Future);
        }
        let tiers = &self.history.tiers;
        if tiers.iter().all(|tier| at < History::cutoff(*tier, now)) {
            return Err(Refused::TooOld);
        }
        let n_open = &mut self.n_open;
        // The node looked up once for every tier's bucket.
        let buckets = Self::node_buckets_in(&mut self.open, node);
        for (tier_idx, tier) in tiers.iter().enumerate() {
            if at < History::cutoff(*tier, now) {
                continue;
            }
            let key = (gpu_index, tier_idx, bucket_number(at, *tier));
            let fields = Self::open_bucket(buckets, n_open, key);
            for (field, value) in values {
                if value.is_finite() {
                    fields.fold(*field, &Stat::of(*value));
                }
            }
        }
        Ok(())
    }

    /// Takes the buckets that closed: their end plus `lateness` is not after `now`, at most
    /// `most` of them, oldest first (by start, node, GPU, then tier); the rest stay for the
    /// next take. Buckets without a single finite value are dropped. Only the buckets taken
    /// are turned into [`Bucket`]s, so that a writer taking them a batch at a time holds no
    /// more than a batch.
    pub fn take_closed(&mut self, now: Timestamp, lateness: Duration, most: usize) -> Vec<Bucket> {
        let lateness = chrono::Duration::from_std(lateness).unwrap_or(chrono::Duration::MAX);
        let tiers = &self.history.tiers;
        let mut closed: Vec<(Timestamp, &NodeId, u32, u32, OpenKey)> = Vec::new();
        for (node, open) in &self.open {
            for &key in open.keys() {
                let (gpu_index, tier_idx, number) = key;
                let tier = tiers[tier_idx];
                if bucket_start(number + 1, tier) + lateness <= now {
                    let start = bucket_start(number, tier);
                    closed.push((start, node, gpu_index, tier.resolution_s(), key));
                }
            }
        }
        if closed.len() > most {
            closed.select_nth_unstable_by(most, |a, b| {
                (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3))
            });
            closed.truncate(most);
        }
        closed.sort_unstable_by(|a, b| (a.0, a.1, a.2, a.3).cmp(&(b.0, b.1, b.2, b.3)));
        let taken: Vec<(Timestamp, NodeId, u32, u32, OpenKey)> = closed
            .into_iter()
            .map(|(start, node, gpu_index, resolution_s, key)| {
                (start, node.clone(), gpu_index, resolution_s, key)
            })
            .collect();
        let mut buckets = Vec::with_capacity(taken.len());
        for (start, node, gpu_index, resolution_s, key) in taken {
            let Some(open) = self.open.get_mut(&node) else {
                continue;
            };
            let Some(fields) = open.remove(&key) else {
                continue;
            };
            self.n_open -= 1;
            if open.is_empty() {
                self.open.remove(&node);
            }
            if let Some(fields) = fields.into_fields() {
                buckets.push(Bucket {
                    node,
                    gpu_index,
                    resolution_s,
                    start,
                    fields,
                });
            }
        }
        buckets
    }

    /// Takes every bucket, closed or not, at most `most` of them, oldest first (at shutdown:
    /// a later sample of an open bucket makes a second row, merged when read).
    pub fn take_all(&mut self, most: usize) -> Vec<Bucket> {
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        self.take_closed(far, Duration::ZERO, most)
    }

    /// Puts back buckets that could not be written, to go with the next write. Merged into
    /// what opened meanwhile; beyond `bound` open buckets the rest are dropped and counted.
    pub fn restore(&mut self, buckets: Vec<Bucket>, bound: usize) -> usize {
        let mut dropped = 0;
        for bucket in buckets {
            let Some(tier_idx) = self
                .history
                .tiers
                .iter()
                .position(|tier| tier.resolution_s() == bucket.resolution_s)
            else {
                dropped += 1;
                continue;
            };
            let tier = self.history.tiers[tier_idx];
            let key = (
                bucket.gpu_index,
                tier_idx,
                bucket_number(bucket.start, tier),
            );
            let is_open = self
                .open
                .get(&bucket.node)
                .is_some_and(|open| open.contains_key(&key));
            if !is_open && self.n_open >= bound {
                dropped += 1;
                continue;
            }
            let n_open = &mut self.n_open;
            let buckets = Self::node_buckets_in(&mut self.open, &bucket.node);
            let fields = Self::open_bucket(buckets, n_open, key);
            for (field, stat) in &bucket.fields {
                fields.fold(*field, stat);
            }
        }
        dropped
    }
}

/// The number of the bucket of `tier` holding `at` (buckets count from the Unix epoch).
fn bucket_number(at: Timestamp, tier: Tier) -> i64 {
    let width = i64::from(tier.resolution_s().max(1));
    at.timestamp().div_euclid(width)
}

/// Where bucket `number` of `tier` starts.
fn bucket_start(number: i64, tier: Tier) -> Timestamp {
    let width = i64::from(tier.resolution_s().max(1));
    chrono::DateTime::from_timestamp(number.saturating_mul(width), 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn node(name: &str) -> NodeId {
        NodeId::from(name)
    }

    #[test]
    fn the_default_keeps_10s_for_a_day_and_1m_for_30_days() {
        let history = History::default();
        assert_eq!(history.to_string(), "10s:24h,1m:720h");
        assert_eq!(History::parse("10s:1d,1m:30d"), Ok(history.clone()));
        assert_eq!(History::new(history.tiers().to_vec()), Ok(history));
    }

    #[test]
    fn a_bad_history_names_every_problem() {
        let err = History::parse("1m:1h,30s:2h").unwrap_err();
        assert!(
            err.contains("tier 2 (30s:2h): its resolution must be a multiple"),
            "{err}"
        );
        let err = History::parse("10s:1m").unwrap_err();
        assert!(err.contains("keep at least ten buckets"), "{err}");
        let err = History::parse("10s:1d,1m:12h").unwrap_err();
        assert!(err.contains("keep it longer than tier 1"), "{err}");
        let err = History::parse("500ms:1h").unwrap_err();
        assert!(err.contains("whole seconds"), "{err}");
        let err = History::parse("10s").unwrap_err();
        assert!(err.contains("RESOLUTION:RETENTION"), "{err}");
        let err = History::parse("10s:1d,1m:2d,5m:3d,10m:4d,1h:5d").unwrap_err();
        assert!(err.contains("1 to 4 tiers"), "{err}");
        let err = History::parse("1d:500d").unwrap_err();
        assert!(err.contains("at most 400d"), "{err}");
        let err = History::parse("10s:1d,15s:2d").unwrap_err();
        assert!(err.contains("multiple of tier 1's"), "{err}");
    }

    #[test]
    fn samples_fold_into_every_tiers_bucket_with_min_mean_max() {
        let mut rollup = Rollup::new(History::parse("10s:1d,1m:30d").unwrap());
        let n1 = node("n1");
        for (secs, temp) in [(0, 40.0), (3, 50.0), (9, 60.0), (10, 70.0)] {
            rollup
                .add(&n1, 0, at(secs), &[(Field::GpuTempC, temp)], at(11))
                .unwrap();
        }
        // Buckets of 10 s: [0, 10) and [10, 20); of 1 min: one (at(0) is a multiple of 60).
        assert_eq!(rollup.open_buckets(), 3);
        let closed = rollup.take_closed(at(12), Duration::from_secs(2), usize::MAX);
        assert_eq!(closed.len(), 1, "{closed:?}");
        let first = &closed[0];
        assert_eq!((first.resolution_s, first.start), (10, at(0)));
        let stat = first.fields[&Field::GpuTempC];
        assert_eq!((stat.min, stat.max, stat.samples), (40.0, 60.0, 3));
        assert_eq!(stat.mean(), 50.0);
        // Not yet: the 10 s bucket [10, 20) closes at 20 plus the lateness.
        assert!(
            rollup
                .take_closed(at(21), Duration::from_secs(2), usize::MAX)
                .is_empty()
        );
        let closed = rollup.take_closed(at(60), Duration::from_secs(2), usize::MAX);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].start, at(10));
        let closed = rollup.take_closed(at(62), Duration::from_secs(2), usize::MAX);
        assert_eq!(closed.len(), 1);
        let minute = &closed[0];
        assert_eq!((minute.resolution_s, minute.start), (60, at(0)));
        assert_eq!(minute.fields[&Field::GpuTempC].samples, 4);
        assert_eq!(minute.fields[&Field::GpuTempC].mean(), 55.0);
        assert_eq!(rollup.open_buckets(), 0);
    }

    #[test]
    fn closed_buckets_are_taken_at_most_so_many_at_a_time_oldest_first() {
        let mut rollup = Rollup::new(History::parse("10s:1d,1m:30d").unwrap());
        let temp = [(Field::GpuTempC, 40.0)];
        // Two nodes' 10 s buckets [0, 10) and [10, 20), GPU 1 before GPU 0, and their 1 min
        // buckets (still open at 25 s).
        for name in ["n2", "n1"] {
            for gpu in [1, 0] {
                for secs in [15, 5] {
                    rollup
                        .add(&node(name), gpu, at(secs), &temp, at(secs))
                        .unwrap();
                }
            }
        }
        assert_eq!(rollup.open_buckets(), 12);
        let place = |b: &Bucket| (b.start, b.node.to_string(), b.gpu_index);
        let first = rollup.take_closed(at(25), Duration::from_secs(2), 3);
        assert_eq!(
            first.iter().map(place).collect::<Vec<_>>(),
            [
                (at(0), "n1".to_owned(), 0),
                (at(0), "n1".to_owned(), 1),
                (at(0), "n2".to_owned(), 0),
            ]
        );
        assert_eq!(rollup.open_buckets(), 9, "the rest stay open");
        let second = rollup.take_closed(at(25), Duration::from_secs(2), 3);
        assert_eq!(
            second.iter().map(place).collect::<Vec<_>>(),
            [
                (at(0), "n2".to_owned(), 1),
                (at(10), "n1".to_owned(), 0),
                (at(10), "n1".to_owned(), 1),
            ]
        );
        let rest = rollup.take_closed(at(25), Duration::from_secs(2), 3);
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(rest.iter().all(|b| b.resolution_s == 10));
        assert!(
            rollup
                .take_closed(at(25), Duration::from_secs(2), 3)
                .is_empty()
        );
        // Every sample was taken once: the minute buckets hold them all.
        let minutes = rollup.take_all(usize::MAX);
        assert_eq!(minutes.len(), 4);
        assert!(
            minutes
                .iter()
                .all(|b| b.fields[&Field::GpuTempC].samples == 2)
        );
        assert_eq!(rollup.open_buckets(), 0);
    }

    #[test]
    fn gpus_nodes_and_fields_stay_apart_and_non_finite_values_are_skipped() {
        let mut rollup = Rollup::new(History::parse("10s:1d").unwrap());
        let values = [(Field::GpuTempC, 40.0), (Field::PowerW, f64::NAN)];
        rollup.add(&node("n1"), 0, at(1), &values, at(1)).unwrap();
        rollup.add(&node("n1"), 1, at(1), &values, at(1)).unwrap();
        rollup.add(&node("n2"), 0, at(1), &values, at(1)).unwrap();
        let closed = rollup.take_all(usize::MAX);
        assert_eq!(closed.len(), 3);
        for bucket in &closed {
            assert_eq!(bucket.fields.keys().collect::<Vec<_>>(), [&Field::GpuTempC]);
        }
        // A sample with no finite value at all leaves no bucket.
        rollup
            .add(
                &node("n1"),
                0,
                at(1),
                &[(Field::PowerW, f64::INFINITY)],
                at(1),
            )
            .unwrap();
        assert!(rollup.take_all(usize::MAX).is_empty());
    }

    #[test]
    fn a_sample_out_of_every_retention_or_from_the_future_is_refused() {
        let mut rollup = Rollup::new(History::parse("10s:1h,1m:1d").unwrap());
        let n1 = node("n1");
        let temp = [(Field::GpuTempC, 40.0)];
        assert_eq!(
            rollup.add(&n1, 0, at(0), &temp, at(0) + chrono::Duration::days(2)),
            Err(Refused::TooOld)
        );
        assert_eq!(
            rollup.add(&n1, 0, at(600), &temp, at(0)),
            Err(Refused::Future)
        );
        // Two hours old: out of the 10 s tier, still in the 1 min tier.
        rollup
            .add(&n1, 0, at(0), &temp, at(0) + chrono::Duration::hours(2))
            .unwrap();
        let kept = rollup.take_all(usize::MAX);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].resolution_s, 60);
    }

    #[test]
    fn rows_of_one_bucket_merge_when_read() {
        let mut rollup = Rollup::new(History::parse("10s:1d").unwrap());
        let n1 = node("n1");
        rollup
            .add(&n1, 0, at(1), &[(Field::GpuTempC, 40.0)], at(1))
            .unwrap();
        let first = rollup.take_all(usize::MAX);
        // A late sample of the same bucket, written after the first row.
        rollup
            .add(
                &n1,
                0,
                at(2),
                &[(Field::GpuTempC, 60.0), (Field::PowerW, 300.0)],
                at(30),
            )
            .unwrap();
        let second = rollup.take_all(usize::MAX);
        let merged = merge(first.into_iter().chain(second).collect());
        assert_eq!(merged.len(), 1);
        let temp = merged[0].fields[&Field::GpuTempC];
        assert_eq!(
            (temp.min, temp.max, temp.samples, temp.mean()),
            (40.0, 60.0, 2, 50.0)
        );
        assert_eq!(merged[0].fields[&Field::PowerW].samples, 1);
    }

    #[test]
    fn buckets_put_back_merge_with_new_samples_and_are_bounded() {
        let mut rollup = Rollup::new(History::parse("10s:1d").unwrap());
        let n1 = node("n1");
        rollup
            .add(&n1, 0, at(1), &[(Field::GpuTempC, 40.0)], at(1))
            .unwrap();
        let unwritten = rollup.take_all(usize::MAX);
        rollup
            .add(&n1, 0, at(2), &[(Field::GpuTempC, 50.0)], at(2))
            .unwrap();
        rollup
            .add(&n1, 1, at(2), &[(Field::GpuTempC, 50.0)], at(2))
            .unwrap();
        assert_eq!(rollup.restore(unwritten, 2), 0);
        assert_eq!(
            rollup.open_buckets(),
            2,
            "merged into the open one, not a third"
        );
        let all = rollup.take_all(usize::MAX);
        assert_eq!(rollup.open_buckets(), 0);
        let gpu0 = all.iter().find(|bucket| bucket.gpu_index == 0).unwrap();
        assert_eq!(gpu0.fields[&Field::GpuTempC].samples, 2);
        // Full: a bucket that is not open any more is dropped and counted.
        rollup
            .add(&n1, 0, at(30), &[(Field::GpuTempC, 50.0)], at(30))
            .unwrap();
        assert_eq!(rollup.restore(all, 1), 2);
        assert_eq!(rollup.open_buckets(), 1);
    }

    #[test]
    fn a_chart_reads_the_finest_tier_that_reaches_back_far_enough() {
        let history = History::parse("10s:1d,1m:30d").unwrap();
        let now = at(0) + chrono::Duration::days(40);
        let tier = history.tier_for(now - chrono::Duration::hours(3), now);
        assert_eq!(tier.resolution_s(), 10);
        let tier = history.tier_for(now - chrono::Duration::days(3), now);
        assert_eq!(tier.resolution_s(), 60);
        let tier = history.tier_for(now - chrono::Duration::days(90), now);
        assert_eq!(tier.resolution_s(), 60);
        assert_eq!(History::cutoff(tier, now), now - chrono::Duration::days(30));
    }
}
