//! One open window of one (cluster, replica, length): what its records left, and the
//! [`DelayWindow`] it becomes when it closes.
//!
//! Ok delays are kept (exact nearest-rank quantiles at close: 1 s of 10 ms heartbeats is 100
//! values). Upper bounds (the replica already had the heartbeat at the first look) are kept
//! apart: min/quantiles/max come from the exact delays whenever the window has any, because an
//! upper bound says how late the reader looked, not how late the replica was (a reader
//! catching up on a backlog reports seconds for a replica that is in step). A window of upper
//! bounds only reports them, and `upper_bounds` = `count` tells consumers so. Seqs are kept
//! sorted to drop duplicates (two reader groups active-active report the same heartbeat; same
//! commit time, so the same window) and to find gaps. `missing` = non-ok statuses + seqs absent
//! between the window's lowest and highest seq + the gap since the previous adjacent window's
//! highest seq.
//!
//! The vectors are recycled through a spare pool: no allocation per window in steady state.

use super::hold::Hold;
use crate::processor::input::DelayView;
use millilag_core::events::{DelayWindow, MeasureStatus};

#[derive(Debug)]
pub(super) struct OpenWindow {
    pub start: i64,
    seqs: Vec<i64>,
    delays: Vec<i64>,
    /// Ok delays that were upper bounds.
    bounds: Vec<i64>,
    by_status: [i64; 5],
    upper_bounds: i64,
    duplicates: i64,
    pub hold: Hold,
}

fn status_index(s: MeasureStatus) -> usize {
    match s {
        MeasureStatus::Ok => 0,
        MeasureStatus::Timeout => 1,
        MeasureStatus::ReplicaUnreachable => 2,
        MeasureStatus::ReplicationStopped => 3,
        MeasureStatus::Skipped => 4,
        // Never applied (see `Windows::apply`).
        MeasureStatus::Pending => 0,
    }
}

impl OpenWindow {
    /// An empty window from `start`, its vectors taken from `spare`.
    pub fn new(start: i64, spare: &mut Vec<Vec<i64>>) -> OpenWindow {
        OpenWindow {
            start,
            seqs: spare.pop().unwrap_or_default(),
            delays: spare.pop().unwrap_or_default(),
            bounds: spare.pop().unwrap_or_default(),
            by_status: [0; 5],
            upper_bounds: 0,
            duplicates: 0,
            hold: Hold::default(),
        }
    }

    /// Add the record at (`partition`, `offset`). False if its seq is already in: a duplicate,
    /// counted and not applied.
    pub fn add(&mut self, r: &DelayView<'_>, partition: i32, offset: i64) -> bool {
        // Seqs sorted: in-order arrival is one comparison.
        match self.seqs.last() {
            Some(&last) if r.seq <= last => match self.seqs.binary_search(&r.seq) {
                Ok(_) => {
                    self.duplicates += 1;
                    return false;
                }
                Err(at) => self.seqs.insert(at, r.seq),
            },
            _ => self.seqs.push(r.seq),
        }
        let status = status_index(r.status);
        self.by_status[status] += 1;
        if status == 0 {
            if r.upper_bound {
                self.bounds.push(r.delay_us);
                self.upper_bounds += 1;
            } else {
                self.delays.push(r.delay_us);
            }
        }
        if partition >= 0 {
            self.hold.add(partition, offset);
        }
        true
    }

    /// The closed window, and its highest seq. `prev_last_seq`: the previous adjacent
    /// window's highest seq, for the gap at the boundary.
    pub fn summarize(
        &mut self,
        cluster: &str,
        replica: &str,
        len_us: i64,
        prev_last_seq: Option<i64>,
    ) -> (DelayWindow, Option<i64>) {
        let ok_count = (self.delays.len() + self.bounds.len()) as i64;
        let d = if self.delays.is_empty() {
            &mut self.bounds
        } else {
            &mut self.delays
        };
        d.sort_unstable();
        let d = &*d;
        let non_ok: i64 = self.by_status[1..].iter().sum();
        let (first, last) = (self.seqs.first().copied(), self.seqs.last().copied());
        let inner_gaps = match (first, last) {
            (Some(f), Some(l)) => (l - f + 1) - self.seqs.len() as i64,
            _ => 0,
        };
        let boundary_gap = match (prev_last_seq, first) {
            (Some(p), Some(f)) if f > p + 1 => f - p - 1,
            _ => 0,
        };
        let window = DelayWindow {
            cluster: cluster.to_string(),
            replica: replica.to_string(),
            window_start_us: self.start,
            window_us: len_us,
            count: ok_count,
            missing: non_ok + inner_gaps + boundary_gap,
            min_us: d.first().copied(),
            p50_us: nearest_rank(d, 0.50),
            p90_us: nearest_rank(d, 0.90),
            p99_us: nearest_rank(d, 0.99),
            max_us: d.last().copied(),
            timeouts: self.by_status[1],
            unreachable: self.by_status[2],
            replication_stopped: self.by_status[3],
            skipped: self.by_status[4],
            upper_bounds: self.upper_bounds,
            duplicates: self.duplicates,
        };
        (window, last)
    }

    /// Give the vectors back to `spare`.
    pub fn recycle(self, spare: &mut Vec<Vec<i64>>) {
        for mut v in [self.seqs, self.delays, self.bounds] {
            v.clear();
            spare.push(v);
        }
    }
}

/// Nearest-rank quantile of sorted values: the smallest value with at least q of them at or
/// below it.
pub fn nearest_rank(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), Some(50));
        assert_eq!(nearest_rank(&v, 0.9), Some(90));
        assert_eq!(nearest_rank(&v, 0.99), Some(99));
        assert_eq!(nearest_rank(&[7], 0.99), Some(7));
        assert_eq!(nearest_rank(&[1, 2, 3], 0.5), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
