//! Which offset each partition may store: at-least-once across windows and sinks.
//!
//! A record's offset may be stored only when every window containing it has been accepted by
//! every sink and its flush recorded in the processor-state topic. Per partition that is the
//! lowest offset still held by an open window or a closed batch still in flight, or, when
//! nothing is held, the position after the last record consumed. Records that hold nothing
//! (duplicates, late, replayed, dead-lettered) are covered by the consumed position.
//!
//! Batches complete in order: every sink and the state writer handle batches first in, first
//! out, so the oldest pending batch is always the first to finish.
//!
//! Positions are the next offset to read, like every position handed to
//! [`Source::store`](crate::consumer::Source::store), which stores only those that moved.

use super::state::Flushed;
use super::window::Hold;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Closed windows on their way through the sinks.
#[derive(Debug)]
pub struct PendingBatch {
    pub id: u64,
    /// How many windows.
    pub windows: usize,
    /// The processor-state records to write once every sink accepted the batch.
    pub marks: Arc<[Flushed]>,
    pub hold: Hold,
    /// Sinks that have not yet accepted the batch.
    pub sinks_left: usize,
    /// The processor-state write after the sinks.
    pub state_done: bool,
    /// When it was handed to the sinks (processor clock).
    pub pushed_at_us: i64,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Per partition: the offset after the last record consumed.
    consumed: BTreeMap<i32, i64>,
    pending: VecDeque<PendingBatch>,
    next_id: u64,
    pending_windows: usize,
}

impl OffsetTracker {
    pub fn consumed(&mut self, partition: i32, offset: i64) {
        let e = self.consumed.entry(partition).or_insert(offset + 1);
        *e = (*e).max(offset + 1);
    }

    /// Register a batch of closed windows; returns its id.
    pub fn push(&mut self, windows: usize, marks: Arc<[Flushed]>, hold: Hold, sinks: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending_windows += windows;
        self.pending.push_back(PendingBatch {
            id,
            windows,
            marks,
            hold,
            sinks_left: sinks,
            state_done: false,
            pushed_at_us: millilag_core::clock::now_us(),
        });
        id
    }

    /// How long the oldest batch has been waiting for the sinks or the state write.
    pub fn oldest_pending_us(&self, now_us: i64) -> Option<i64> {
        self.pending.front().map(|b| now_us - b.pushed_at_us)
    }

    /// A sink accepted batch `id`. Returns the batch's flush marks when every sink has, so
    /// the caller can record the flush in the processor-state topic.
    pub fn sink_acked(&mut self, id: u64) -> Option<Arc<[Flushed]>> {
        let b = self.pending.iter_mut().find(|b| b.id == id)?;
        b.sinks_left = b.sinks_left.saturating_sub(1);
        (b.sinks_left == 0).then(|| b.marks.clone())
    }

    /// The flush of batch `id` is recorded; drop every finished batch at the front.
    pub fn state_acked(&mut self, id: u64) {
        if let Some(b) = self.pending.iter_mut().find(|b| b.id == id) {
            b.state_done = true;
        }
        while self
            .pending
            .front()
            .is_some_and(|b| b.state_done && b.sinks_left == 0)
        {
            if let Some(b) = self.pending.pop_front() {
                self.pending_windows -= b.windows;
            }
        }
    }

    /// Closed windows not yet fully flushed.
    pub fn pending_windows(&self) -> usize {
        self.pending_windows
    }

    pub fn pending_batches(&self) -> usize {
        self.pending.len()
    }

    /// Per partition the position that may be stored now, given the holds of the windows
    /// still open.
    pub fn positions(&self, open_holds: impl Iterator<Item = (i32, i64)>) -> BTreeMap<i32, i64> {
        let mut pos = self.consumed.clone();
        let held = open_holds.chain(self.pending.iter().flat_map(|b| b.hold.iter()));
        for (p, o) in held {
            if let Some(e) = pos.get_mut(&p) {
                *e = (*e).min(o);
            }
        }
        pos
    }

    /// Forget partitions this consumer no longer owns.
    pub fn forget_partition(&mut self, partition: i32) {
        self.consumed.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::OffsetStore;

    /// What the run loop stores on a tick: the positions that moved.
    fn advance(
        t: &OffsetTracker,
        stored: &mut OffsetStore,
        open: impl Iterator<Item = (i32, i64)>,
    ) -> Vec<(i32, i64)> {
        stored.advance(t.positions(open))
    }

    fn hold(p: i32, o: i64) -> Hold {
        let mut h = Hold::default();
        h.add(p, o);
        h
    }

    #[test]
    fn offset_waits_for_every_sink_and_the_state_write() {
        let mut t = OffsetTracker::default();
        let mut s = OffsetStore::default();
        for o in 0..10 {
            t.consumed(0, o);
        }
        // Window with records 0..5 closed and in flight; window from 5 still open.
        let id = t.push(1, Arc::from(Vec::new()), hold(0, 0), 2);
        let open = [(0, 5)];
        assert_eq!(advance(&t, &mut s, open.iter().copied()), vec![(0, 0)]);
        assert!(t.sink_acked(id).is_none(), "one of two sinks");
        assert!(t.sink_acked(id).is_some());
        assert!(
            advance(&t, &mut s, open.iter().copied()).is_empty(),
            "state not written"
        );
        t.state_acked(id);
        assert_eq!(advance(&t, &mut s, open.iter().copied()), vec![(0, 5)]);
        // Nothing open: everything consumed may be stored.
        assert_eq!(advance(&t, &mut s, std::iter::empty()), vec![(0, 10)]);
        assert!(
            advance(&t, &mut s, std::iter::empty()).is_empty(),
            "no repeat"
        );
    }

    #[test]
    fn batches_finish_in_order() {
        let mut t = OffsetTracker::default();
        let mut s = OffsetStore::default();
        t.consumed(0, 20);
        let a = t.push(1, Arc::from(Vec::new()), hold(0, 3), 1);
        let b = t.push(1, Arc::from(Vec::new()), hold(0, 8), 1);
        t.sink_acked(b);
        t.state_acked(b);
        assert_eq!(t.pending_batches(), 2, "b waits behind a");
        assert_eq!(advance(&t, &mut s, std::iter::empty()), vec![(0, 3)]);
        t.sink_acked(a);
        t.state_acked(a);
        assert_eq!(t.pending_batches(), 0);
        assert_eq!(advance(&t, &mut s, std::iter::empty()), vec![(0, 21)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        let mut s = OffsetStore::default();
        t.consumed(0, 4);
        t.consumed(1, 9);
        let open = [(1, 2)];
        assert_eq!(
            advance(&t, &mut s, open.iter().copied()),
            vec![(0, 5), (1, 2)]
        );
    }
}
