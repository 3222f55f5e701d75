//! What was stored per partition, so that only progress is stored.
//!
//! Every value is the next offset to read (the last finished record's offset + 1): what
//! `store_offsets` takes and what Kafka commits. Trackers hand in their current positions
//! (the finished prefix of records begun and finished one by one, or the processor's window
//! holds); [`OffsetStore::advance`] keeps the ones that moved forward.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct OffsetStore {
    stored: BTreeMap<i32, i64>,
}

impl OffsetStore {
    /// Of `next` (partition, next offset to read), the ones past what was stored; they count
    /// as stored from now on.
    pub fn advance(&mut self, next: impl IntoIterator<Item = (i32, i64)>) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for (p, o) in next {
            if self.stored.get(&p).is_none_or(|prev| o > *prev) {
                self.stored.insert(p, o);
                moved.push((p, o));
            }
        }
        moved
    }

    /// Partitions no longer ours (revoked), or whose store failed (the next position is
    /// stored again).
    pub fn forget(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for p in partitions {
            self.stored.remove(&p);
        }
    }

    /// What was stored last, per partition (for the final synchronous commit).
    pub fn stored(&self) -> &BTreeMap<i32, i64> {
        &self.stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_progress_is_stored() {
        let mut s = OffsetStore::default();
        assert_eq!(s.advance([(0, 5), (1, 2)]), vec![(0, 5), (1, 2)]);
        assert!(s.advance([(0, 5), (1, 2)]).is_empty(), "no repeat");
        assert!(s.advance([(0, 4)]).is_empty(), "never backwards");
        assert_eq!(s.advance([(0, 6), (1, 2)]), vec![(0, 6)]);
        assert_eq!(s.stored().get(&0), Some(&6));
    }

    #[test]
    fn a_forgotten_partition_starts_over() {
        let mut s = OffsetStore::default();
        s.advance([(0, 9)]);
        s.forget([0]);
        assert!(s.stored().is_empty());
        assert_eq!(s.advance([(0, 3)]), vec![(0, 3)], "a new owner's position");
    }
}
