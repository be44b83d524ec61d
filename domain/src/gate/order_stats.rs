//! A sorted multiset of numbers that answers rank queries (percentiles) and takes insertions
//! and removals in time proportional to the square root of its size, so a percentile rule
//! can follow one new result without sorting every value again.
//!
//! Values live in sorted chunks of at most [`CHUNK`] values; a lookup binary-searches the chunk
//! whose range holds the value, and a rank query walks the chunk lengths.

use std::cmp::Ordering;

/// Most values one chunk holds before it splits.
const CHUNK: usize = 1024;

/// A sorted multiset of `f64` (ordered by [`f64::total_cmp`]).
#[derive(Clone, Debug, Default)]
pub(super) struct OrderStats {
    chunks: Vec<Vec<f64>>,
    len: usize,
}

impl OrderStats {
    /// Builds the multiset from unsorted values in one sort.
    pub(super) fn from_values(mut values: Vec<f64>) -> Self {
        values.sort_unstable_by(f64::total_cmp);
        let len = values.len();
        let chunks = values.chunks(CHUNK / 2).map(<[f64]>::to_vec).collect();
        Self { chunks, len }
    }

    /// How many values it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The chunk a value belongs in: the first whose last value is not below it.
    fn chunk_for(&self, value: f64) -> usize {
        let idx = self.chunks.partition_point(|chunk| {
            chunk
                .last()
                .is_some_and(|last| last.total_cmp(&value) == Ordering::Less)
        });
        idx.min(self.chunks.len().saturating_sub(1))
    }

    /// Adds one value.
    pub(super) fn insert(&mut self, value: f64) {
        self.len += 1;
        if self.chunks.is_empty() {
            self.chunks.push(vec![value]);
            return;
        }
        let c = self.chunk_for(value);
        let chunk = &mut self.chunks[c];
        let at = chunk.partition_point(|v| v.total_cmp(&value) == Ordering::Less);
        chunk.insert(at, value);
        if chunk.len() > CHUNK {
            let upper = chunk.split_off(CHUNK / 2);
            self.chunks.insert(c + 1, upper);
        }
    }

    /// Removes one value equal to `value`; false when there is none.
    pub(super) fn remove(&mut self, value: f64) -> bool {
        if self.chunks.is_empty() {
            return false;
        }
        let c = self.chunk_for(value);
        let chunk = &mut self.chunks[c];
        let at = chunk.partition_point(|v| v.total_cmp(&value) == Ordering::Less);
        if chunk
            .get(at)
            .is_none_or(|v| v.total_cmp(&value) != Ordering::Equal)
        {
            return false;
        }
        chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        true
    }

    /// The value of rank `rank` (1-based, smallest first).
    fn at_rank(&self, rank: usize) -> Option<f64> {
        let mut left = rank.checked_sub(1)?;
        for chunk in &self.chunks {
            if left < chunk.len() {
                return Some(chunk[left]);
            }
            left -= chunk.len();
        }
        None
    }

    /// The nearest-rank percentile `p` (0-1], as [`super::Aggregate::apply`] computes it.
    pub(super) fn percentile(&self, p: f64) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let rank = ((p * self.len as f64).ceil() as usize).clamp(1, self.len);
        self.at_rank(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Aggregate;
    use proptest::prelude::*;

    proptest! {
        /// After any mix of insertions and removals, every percentile equals the one computed
        /// by sorting what is left.
        #[test]
        fn percentiles_match_a_full_sort(
            initial in proptest::collection::vec(-50i32..50, 0..3000),
            added in proptest::collection::vec(-50i32..50, 0..3000),
            removed in proptest::collection::vec(-50i32..50, 0..500),
        ) {
            let mut stats = OrderStats::from_values(initial.iter().map(|v| f64::from(*v)).collect());
            let mut plain: Vec<f64> = initial.iter().map(|v| f64::from(*v)).collect();
            for v in &added {
                stats.insert(f64::from(*v));
                plain.push(f64::from(*v));
            }
            for v in &removed {
                let value = f64::from(*v);
                let present = plain.iter().position(|x| *x == value);
                prop_assert_eq!(stats.remove(value), present.is_some());
                if let Some(i) = present {
                    plain.swap_remove(i);
                }
            }
            prop_assert_eq!(stats.len(), plain.len());
            if !plain.is_empty() {
                for (aggregate, p) in [(Aggregate::P5, 0.05), (Aggregate::P50, 0.5), (Aggregate::P95, 0.95), (Aggregate::P99, 0.99)] {
                    prop_assert_eq!(stats.percentile(p), Some(aggregate.apply(&plain)));
                }
            }
        }
    }
}
