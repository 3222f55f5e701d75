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
//! A heartbeat reported at `reader.timeout` (timeout, replication_stopped) that the replica
//! shows later gets a second record, ok with its real delay: while the window is open, the ok
//! record replaces the first (it is not a duplicate).
//!
//! When it closes, what is known beyond its records ([`CloseCtx`]: the replica's live lag, the
//! writer's interval) adds the heartbeats not visible yet at their delay so far, and counts as
//! missing the heartbeats nothing accounts for.
//!
//! The vectors are recycled through a spare pool: no allocation per window in steady state.

use super::hold::Hold;
use super::live::CloseCtx;
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
    /// (seq, status index) of the records that were not ok: an ok record for the same seq may
    /// replace one (rare, so a short list).
    not_ok: Vec<(i64, usize)>,
    upper_bounds: i64,
    duplicates: i64,
    /// The newest commit time among its records.
    last_commit_us: i64,
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
            not_ok: Vec::new(),
            upper_bounds: 0,
            duplicates: 0,
            last_commit_us: i64::MIN,
            hold: Hold::default(),
        }
    }

    /// Add the record at (`partition`, `offset`). False if its seq is already in: a duplicate,
    /// counted and not applied (unless it is the ok record of a heartbeat reported not ok).
    pub fn add(&mut self, r: &DelayView<'_>, partition: i32, offset: i64) -> bool {
        let status = status_index(r.status);
        // Seqs sorted: in-order arrival is one comparison.
        match self.seqs.last() {
            Some(&last) if r.seq <= last => match self.seqs.binary_search(&r.seq) {
                Ok(_) => {
                    let replaced = match self.not_ok.iter().position(|(s, _)| *s == r.seq) {
                        Some(i) if status == 0 => Some(self.not_ok.swap_remove(i).1),
                        _ => None,
                    };
                    let Some(old) = replaced else {
                        self.duplicates += 1;
                        return false;
                    };
                    self.by_status[old] -= 1;
                }
                Err(at) => self.seqs.insert(at, r.seq),
            },
            _ => self.seqs.push(r.seq),
        }
        self.by_status[status] += 1;
        self.last_commit_us = self.last_commit_us.max(r.event_time_us());
        if status != 0 {
            self.not_ok.push((r.seq, status));
        } else if r.upper_bound {
            self.bounds.push(r.delay_us);
            self.upper_bounds += 1;
        } else {
            self.delays.push(r.delay_us);
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
        ctx: &CloseCtx,
    ) -> (DelayWindow, Option<i64>) {
        let ok_count = (self.delays.len() + self.bounds.len()) as i64;
        let end = self.start.saturating_add(len_us);
        let pending = ctx.pending_delays(self.start, end);
        // Not shown yet at close: their delay so far is a lower bound of a real delay, not a
        // reader's late look, so they join the exact delays.
        self.delays.extend_from_slice(&pending);
        let d = if self.delays.is_empty() {
            &mut self.bounds
        } else {
            &mut self.delays
        };
        d.sort_unstable();
        let d = &*d;
        let non_ok: i64 = self.by_status[1..].iter().sum();
        let (first, last) = (self.seqs.first().copied(), self.seqs.last().copied());
        // Seqs come from Kafka: gaps are counted without wrapping whatever they are.
        let inner_gaps = match (first, last) {
            (Some(f), Some(l)) => l
                .saturating_sub(f)
                .saturating_add(1)
                .saturating_sub(self.seqs.len() as i64),
            _ => 0,
        };
        let boundary_gap = match (prev_last_seq, first) {
            (Some(p), Some(f)) if f > p.saturating_add(1) => f.saturating_sub(p).saturating_sub(1),
            _ => 0,
        };
        let tail = if ctx.silent && self.last_commit_us > i64::MIN {
            ctx.unaccounted(self.last_commit_us, end)
        } else {
            0
        };
        let window = DelayWindow {
            cluster: cluster.to_string(),
            replica: replica.to_string(),
            window_start_us: self.start,
            window_us: len_us,
            count: ok_count,
            missing: non_ok
                .saturating_add(inner_gaps)
                .saturating_add(boundary_gap)
                .saturating_add(tail),
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
        // `not_ok` is small and usually never allocated: dropped with the window.
        for mut v in [self.seqs, self.delays, self.bounds] {
            v.clear();
            spare.push(v);
        }
    }
}

/// The window [start, start + len) of a replica with no record in it.
pub(super) fn empty_window(
    cluster: &str,
    replica: &str,
    start: i64,
    len_us: i64,
    ctx: &CloseCtx,
) -> DelayWindow {
    let end = start.saturating_add(len_us);
    let mut pending = ctx.pending_delays(start, end);
    pending.sort_unstable();
    DelayWindow {
        cluster: cluster.to_string(),
        replica: replica.to_string(),
        window_start_us: start,
        window_us: len_us,
        count: 0,
        missing: ctx.unaccounted_in(start, end, pending.len()),
        min_us: pending.first().copied(),
        p50_us: nearest_rank(&pending, 0.50),
        p90_us: nearest_rank(&pending, 0.90),
        p99_us: nearest_rank(&pending, 0.99),
        max_us: pending.last().copied(),
        timeouts: 0,
        unreachable: 0,
        replication_stopped: 0,
        skipped: 0,
        upper_bounds: 0,
        duplicates: 0,
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
