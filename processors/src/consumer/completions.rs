//! Record-by-record completion, for a service whose records finish out of order (the reader:
//! a heartbeat-set record is done when every replica's record for it was acknowledged by
//! Kafka). The position to store is the end of each partition's contiguous done prefix, so a
//! crash replays from the oldest record that was not fully handled, never skipping one.

use std::collections::{BTreeMap, HashMap};

#[derive(Default, Debug)]
pub struct Completions {
    /// partition -> offset -> done?
    open: HashMap<i32, BTreeMap<i64, bool>>,
}

impl Completions {
    /// A record was consumed and its work begins.
    pub fn begin(&mut self, partition: i32, offset: i64) {
        self.open
            .entry(partition)
            .or_default()
            .insert(offset, false);
    }

    /// Its work is done. Returns the offset to store (next to read) if the partition's
    /// contiguous done prefix advanced.
    pub fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.open.get_mut(&partition)?;
        *p.get_mut(&offset)? = true;
        let mut store = None;
        while let Some((&o, &done)) = p.first_key_value() {
            if !done {
                break;
            }
            p.pop_first();
            store = Some(o + 1);
        }
        store
    }

    /// Records still in progress.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.open.values().map(|p| p.len()).sum()
    }

    /// Partitions revoked: their records' completions no longer count (the new owner reads
    /// them again from the last commit).
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.open.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_the_contiguous_prefix() {
        let mut t = Completions::default();
        for o in 10..14 {
            t.begin(0, o);
        }
        assert_eq!(t.finish(0, 11), None, "10 still open");
        assert_eq!(t.finish(0, 12), None);
        assert_eq!(
            t.finish(0, 10),
            Some(13),
            "10, 11, 12 done: next to read is 13"
        );
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.finish(0, 13), Some(14));
        assert_eq!(t.finish(1, 5), None, "unknown partition");
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = Completions::default();
        t.begin(0, 1);
        t.begin(1, 7);
        assert_eq!(t.finish(1, 7), Some(8));
        assert_eq!(t.in_flight(), 1, "partition 0 still waits");
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let mut t = Completions::default();
        t.begin(0, 1);
        t.begin(0, 2);
        t.begin(1, 4);
        t.forget(&[0]);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(
            t.finish(0, 1),
            None,
            "finished after the revoke: not ours to store"
        );
        // Assigned again and re-read from the commit: tracked afresh.
        t.begin(0, 1);
        assert_eq!(t.finish(0, 1), Some(2));
    }
}
