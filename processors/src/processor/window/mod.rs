//! Tumbling windows per (cluster, replica), closed on event time.
//!
//! Every record is applied to one window per configured length: the window whose start is its
//! event time (the heartbeat's primary-clock commit time) rounded down to a multiple of the
//! length. Per (cluster, replica) the watermark is the largest event time seen minus
//! `allowed_lateness`; a window closes when the watermark reaches its end, or by the wall clock
//! `idle_close` after its end when no newer record comes (a replica that went silent).
//!
//! Inside a window (`open.rs`): exact quantiles over the ok delays, upper bounds kept apart,
//! duplicates dropped and gaps counted by seq.
//!
//! A record whose window already closed is late: counted, not applied. One whose window was
//! flushed before a restart (the processor-state topic says so) is a replay: skipped, so a
//! window rebuilt from part of its records never overwrites the complete point.
//!
//! Each open window remembers the lowest Kafka offset per partition it holds ([`Hold`]), so the run loop
//! never stores an offset past a record whose window is not yet in every sink.
//!
//! Hot path: no allocation per record. (cluster, replica) is interned to a `u32` through two
//! borrowed-`&str` hash lookups; window vectors are recycled.

mod hold;
mod open;

pub use hold::Hold;
pub use open::nearest_rank;

use super::input::DelayView;
use millilag_core::events::{DelayWindow, MeasureStatus};
use open::OpenWindow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A window that closed, with what it holds.
#[derive(Debug, Clone)]
pub struct Closed {
    pub window: DelayWindow,
    pub hold: Hold,
    /// The window's highest seq (kept in the processor-state so a rebuilt next window counts
    /// the boundary gap the same way).
    pub last_seq: Option<i64>,
    pub label: Arc<str>,
}

/// What happened to one record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Window lengths the record was added to.
    pub applied: u8,
    /// Lengths where it was a duplicate seq.
    pub duplicate: u8,
    /// Lengths where its window had already closed.
    pub late: u8,
    /// Which lengths (bit i = `specs()[i]`) those were.
    pub late_mask: u32,
    /// Lengths where its window was flushed before a restart.
    pub replayed: u8,
}

#[derive(Debug, Default)]
struct Lane {
    /// Open windows, oldest first.
    open: VecDeque<OpenWindow>,
    /// Every window ending at or before this is closed.
    closed_until: i64,
    /// Every window ending at or before this was flushed before a restart.
    flushed_until: i64,
    /// (start, highest seq) of the last closed window, for the boundary gap.
    last_closed: Option<(i64, Option<i64>)>,
}

#[derive(Debug)]
struct KeyState {
    cluster: Arc<str>,
    replica: Arc<str>,
    max_event_us: i64,
    /// Wall clock (the run loop's coarse `now`) when the key's last record was applied: a key
    /// still receiving records (e.g. catching up on a backlog) is not idle, however old its
    /// windows are.
    last_arrival_us: i64,
    /// The partition the key's last record came from (its records move with the partition
    /// when the consumer group rebalances).
    partition: i32,
    lanes: Vec<Lane>,
}

/// One configured window length.
#[derive(Debug, Clone)]
pub struct Spec {
    pub len_us: i64,
    /// "1s", "10s", "1m": the `window` tag and Graphite path element.
    pub label: Arc<str>,
}

impl Spec {
    pub fn new(len: std::time::Duration) -> Spec {
        Spec {
            len_us: i64::try_from(len.as_micros()).unwrap_or(i64::MAX),
            label: humantime::format_duration(len).to_string().into(),
        }
    }
}

/// The windows of every (cluster, replica), for every configured length.
#[derive(Debug)]
pub struct Windows {
    specs: Vec<Spec>,
    lateness_us: i64,
    index: HashMap<Box<str>, HashMap<Box<str>, u32>>,
    keys: Vec<KeyState>,
    /// Recycled vectors of closed windows.
    spare: Vec<Vec<i64>>,
    open_count: usize,
    /// Coarse wall clock set by the run loop every tick (no clock read per record).
    now_us: i64,
}

impl Windows {
    /// `specs` are kept shortest first (and unique).
    pub fn new(mut specs: Vec<Spec>, lateness: std::time::Duration) -> Windows {
        specs.sort_by_key(|s| s.len_us);
        specs.dedup_by_key(|s| s.len_us);
        Windows {
            specs,
            lateness_us: i64::try_from(lateness.as_micros()).unwrap_or(i64::MAX),
            index: HashMap::new(),
            keys: Vec::new(),
            spare: Vec::new(),
            open_count: 0,
            now_us: 0,
        }
    }

    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// Windows currently open (all keys, all lengths).
    pub fn open_windows(&self) -> usize {
        self.open_count
    }

    fn intern(&mut self, cluster: &str, replica: &str) -> usize {
        if let Some(id) = self.index.get(cluster).and_then(|m| m.get(replica)) {
            return *id as usize;
        }
        let id = self.keys.len();
        self.keys.push(KeyState {
            cluster: cluster.into(),
            replica: replica.into(),
            max_event_us: i64::MIN,
            last_arrival_us: self.now_us,
            partition: -1,
            lanes: self.specs.iter().map(|_| Lane::default()).collect(),
        });
        self.index
            .entry(cluster.into())
            .or_default()
            .insert(replica.into(), id as u32);
        id
    }

    /// The window of `len_us` with this start was flushed (processor-state at start-up):
    /// records for it and earlier windows are replays and are skipped.
    pub fn restore_flushed(
        &mut self,
        cluster: &str,
        replica: &str,
        len_us: i64,
        start_us: i64,
        last_seq: Option<i64>,
    ) {
        let Some(lane_idx) = self.specs.iter().position(|s| s.len_us == len_us) else {
            return; // a window length no longer configured
        };
        let k = self.intern(cluster, replica);
        let lane = &mut self.keys[k].lanes[lane_idx];
        let end = start_us.saturating_add(len_us);
        if end > lane.flushed_until {
            lane.flushed_until = end;
            lane.closed_until = lane.closed_until.max(end);
            lane.last_closed = Some((start_us, last_seq));
        }
    }

    /// Apply one record at (`partition`, `offset`); windows it closes are appended to `out`.
    pub fn apply(
        &mut self,
        r: &DelayView<'_>,
        partition: i32,
        offset: i64,
        out: &mut Vec<Closed>,
    ) -> Applied {
        if r.status == MeasureStatus::Pending {
            // A live-lag sample, not a measurement of its heartbeat.
            return Applied::default();
        }
        let k = self.intern(r.cluster, r.replica);
        let t = r.event_time_us();
        let mut result = Applied::default();
        let key = &mut self.keys[k];
        key.last_arrival_us = self.now_us;
        key.partition = partition;
        let watermark_before = key.max_event_us.saturating_sub(self.lateness_us);
        for (i, spec) in self.specs.iter().enumerate() {
            let lane = &mut key.lanes[i];
            let start = t.div_euclid(spec.len_us) * spec.len_us;
            let end = start.saturating_add(spec.len_us);
            if end <= lane.flushed_until {
                result.replayed += 1;
                continue;
            }
            if end <= lane.closed_until || end <= watermark_before {
                result.late += 1;
                result.late_mask |= 1 << i.min(31);
                continue;
            }
            // Usually the newest window; search from the back.
            let pos = lane.open.iter().rposition(|w| w.start <= start);
            let w = match pos {
                Some(p) if lane.open[p].start == start => &mut lane.open[p],
                _ => {
                    let at = pos.map_or(0, |p| p + 1);
                    lane.open
                        .insert(at, OpenWindow::new(start, &mut self.spare));
                    self.open_count += 1;
                    &mut lane.open[at]
                }
            };
            if !w.add(r, partition, offset) {
                result.duplicate += 1;
                continue;
            }
            result.applied += 1;
        }
        if t > key.max_event_us {
            key.max_event_us = t;
            let watermark = t.saturating_sub(self.lateness_us);
            self.close_key(k, |_, end| end <= watermark, out);
        }
        result
    }

    /// The wall clock (microseconds) for arrival stamps; the run loop sets it every tick.
    pub fn set_now(&mut self, now_us: i64) {
        self.now_us = now_us;
    }

    /// Close the windows of silent keys: no record for `idle_us` (wall clock) and the window
    /// ended `idle_us` or more before `now_us` (compared with primary-clock event time). A
    /// replica with no newer record never moves its watermark; one that is merely being
    /// replayed from a backlog keeps receiving records and is left to its watermark.
    pub fn close_idle(&mut self, now_us: i64, idle_us: i64, out: &mut Vec<Closed>) {
        self.now_us = self.now_us.max(now_us);
        let limit = now_us.saturating_sub(idle_us);
        for k in 0..self.keys.len() {
            if self.keys[k].last_arrival_us > limit {
                continue;
            }
            self.close_key(k, |_, end| end <= limit, out);
        }
    }

    /// Close every open window (tests and benchmarks: end of input).
    pub fn close_all(&mut self, out: &mut Vec<Closed>) {
        for k in 0..self.keys.len() {
            self.close_key(k, |_, _| true, out);
        }
    }

    fn close_key(&mut self, k: usize, due: impl Fn(i64, i64) -> bool, out: &mut Vec<Closed>) {
        let key = &mut self.keys[k];
        for (i, spec) in self.specs.iter().enumerate() {
            let lane = &mut key.lanes[i];
            while let Some(front) = lane.open.front() {
                let end = front.start.saturating_add(spec.len_us);
                if !due(front.start, end) {
                    break;
                }
                let Some(mut w) = lane.open.pop_front() else {
                    break;
                };
                self.open_count -= 1;
                let prev_last = match lane.last_closed {
                    Some((s, last)) if s.saturating_add(spec.len_us) == w.start => last,
                    _ => None,
                };
                let (window, last_seq) =
                    w.summarize(&key.cluster, &key.replica, spec.len_us, prev_last);
                lane.closed_until = lane.closed_until.max(end);
                lane.last_closed = Some((w.start, last_seq));
                out.push(Closed {
                    window,
                    hold: std::mem::take(&mut w.hold),
                    last_seq,
                    label: spec.label.clone(),
                });
                w.recycle(&mut self.spare);
            }
        }
    }

    /// This consumer lost `partitions` (a rebalance): forget everything about their keys —
    /// open windows are dropped unflushed (the new owner rebuilds them from the committed
    /// offset, which is at or before their first record) and watermarks reset, so that if a
    /// partition comes back its records are windowed afresh. Returns the windows dropped.
    pub fn forget_partitions(&mut self, partitions: &[i32]) -> usize {
        let mut dropped = 0;
        for key in &mut self.keys {
            let moved = partitions.contains(&key.partition)
                || key
                    .lanes
                    .iter()
                    .flat_map(|l| l.open.iter())
                    .any(|w| w.hold.iter().any(|(p, _)| partitions.contains(&p)));
            if !moved {
                continue;
            }
            for lane in &mut key.lanes {
                for w in lane.open.drain(..) {
                    dropped += 1;
                    w.recycle(&mut self.spare);
                }
                *lane = Lane::default();
            }
            key.max_event_us = i64::MIN;
        }
        self.open_count -= dropped;
        dropped
    }

    /// Every open window's hold (for the offset to store).
    pub fn holds(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.keys
            .iter()
            .flat_map(|k| k.lanes.iter())
            .flat_map(|l| l.open.iter())
            .flat_map(|w| w.hold.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::events::MeasureStatus;
    use std::time::Duration;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_763_000_000 * S; // a whole 10 s boundary

    fn view(replica: &str, seq: i64, t: i64, delay: i64, status: MeasureStatus) -> DelayView<'_> {
        DelayView {
            cluster: "main",
            replica,
            seq,
            committed_at_us: t,
            delay_us: delay,
            status,
            upper_bound: false,
            observed_at_us: t + delay,
        }
    }

    fn ok(seq: i64, t: i64, delay: i64) -> DelayView<'static> {
        view("r1", seq, t, delay, MeasureStatus::Ok)
    }

    fn windows(lengths_ms: &[u64], lateness_ms: u64) -> Windows {
        Windows::new(
            lengths_ms
                .iter()
                .map(|ms| Spec::new(Duration::from_millis(*ms)))
                .collect(),
            Duration::from_millis(lateness_ms),
        )
    }

    #[test]
    fn one_second_of_heartbeats_gives_exact_quantiles() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        // 100 heartbeats 10 ms apart, delays 1..=100 ms in shuffled order.
        for i in 0..100i64 {
            let delay = ((i * 37) % 100 + 1) * 1000;
            a.apply(&ok(i + 1, T0 + i * 10_000, delay), 0, i, &mut out);
        }
        assert!(out.is_empty(), "nothing closes before the watermark passes");
        a.apply(&ok(101, T0 + S, 500), 0, 100, &mut out);
        assert_eq!(out.len(), 1);
        let w = &out[0].window;
        assert_eq!((w.window_start_us, w.window_us), (T0, S));
        assert_eq!((w.count, w.missing, w.duplicates), (100, 0, 0));
        assert_eq!(
            (w.min_us, w.p50_us, w.p90_us, w.p99_us, w.max_us),
            (
                Some(1000),
                Some(50_000),
                Some(90_000),
                Some(99_000),
                Some(100_000)
            )
        );
        assert_eq!(out[0].hold.iter().collect::<Vec<_>>(), vec![(0, 0)]);
        assert_eq!(&*out[0].label, "1s");
    }

    #[test]
    fn statuses_gaps_and_duplicates_are_counted() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        a.apply(&ok(1, T0, 100), 0, 0, &mut out);
        a.apply(&ok(2, T0 + 10_000, 300), 0, 1, &mut out);
        // seq 3 and 4 never arrive; 5 times out; 6 is an upper bound (a reader that looked
        // late: not the replica's delay); 2 again from a second reader group.
        a.apply(
            &view("r1", 5, T0 + 40_000, 30 * S, MeasureStatus::Timeout),
            0,
            2,
            &mut out,
        );
        let mut ub = ok(6, T0 + 50_000, 900_000);
        ub.upper_bound = true;
        a.apply(&ub, 0, 3, &mut out);
        let dup = a.apply(&ok(2, T0 + 10_000, 350), 0, 4, &mut out);
        assert_eq!(dup.duplicate, 1);
        a.apply(
            &view("r1", 7, T0 + 60_000, 0, MeasureStatus::ReplicaUnreachable),
            0,
            5,
            &mut out,
        );
        a.close_all(&mut out);
        let w = &out[0].window;
        assert_eq!(w.count, 3, "ok records: 1, 2, 6");
        assert_eq!((w.timeouts, w.unreachable), (1, 1));
        assert_eq!(w.missing, 2 + 2, "two non-ok + seqs 3 and 4");
        assert_eq!((w.duplicates, w.upper_bounds), (1, 1));
        assert_eq!(
            (w.min_us, w.max_us, w.p50_us),
            (Some(100), Some(300), Some(100)),
            "quantiles from the exact delays only"
        );
        assert_eq!(out[0].last_seq, Some(7));
    }

    #[test]
    fn a_window_of_upper_bounds_only_reports_them() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        for (seq, delay) in [(1, 400), (2, 200), (3, 300)] {
            let mut ub = ok(seq, T0 + seq * 10_000, delay);
            ub.upper_bound = true;
            a.apply(&ub, 0, seq, &mut out);
        }
        a.close_all(&mut out);
        let w = &out[0].window;
        assert_eq!((w.count, w.upper_bounds), (3, 3));
        assert_eq!(
            (w.min_us, w.p50_us, w.max_us),
            (Some(200), Some(300), Some(400))
        );
    }

    #[test]
    fn gap_across_adjacent_windows_counts_in_the_later_one() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        a.apply(&ok(10, T0 + 990_000, 1), 0, 0, &mut out);
        a.apply(&ok(13, T0 + S + 20_000, 1), 0, 1, &mut out);
        a.close_all(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].window.missing, 0);
        assert_eq!(out[1].window.missing, 2, "seqs 11 and 12");
    }

    #[test]
    fn lateness_keeps_windows_open_then_late_records_are_counted() {
        let mut a = windows(&[1000], 500);
        let mut out = Vec::new();
        a.apply(&ok(1, T0 + 100_000, 10), 0, 0, &mut out);
        // Into the next window, but within lateness of the first: it stays open.
        a.apply(&ok(3, T0 + S + 400_000, 10), 0, 1, &mut out);
        assert!(out.is_empty());
        // Out of order, within lateness: applied to the first window.
        let r = a.apply(&ok(2, T0 + 900_000, 20), 0, 2, &mut out);
        assert_eq!((r.applied, r.late), (1, 0));
        // Watermark passes the first window's end.
        a.apply(&ok(4, T0 + S + 500_000, 10), 0, 3, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].window.count, 2);
        // Beyond lateness: late, not applied.
        let r = a.apply(&ok(5, T0 + 950_000, 20), 0, 4, &mut out);
        assert_eq!((r.applied, r.late, r.late_mask), (0, 1, 1));
        a.close_all(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].window.count, 2);
    }

    #[test]
    fn every_length_gets_the_record_and_closes_on_its_own_boundary() {
        let mut a = windows(&[1000, 10_000], 0);
        let mut out = Vec::new();
        for i in 0..1000i64 {
            a.apply(&ok(i, T0 + i * 10_000, i), 0, i, &mut out);
        }
        // 10 s of heartbeats: nine 1 s windows closed, the last 1 s and the 10 s still open.
        assert_eq!(out.len(), 9);
        a.apply(&ok(1000, T0 + 10 * S, 0), 0, 1000, &mut out);
        assert_eq!(out.len(), 11);
        let ten = out.iter().find(|c| c.window.window_us == 10 * S).unwrap();
        assert_eq!(ten.window.count, 1000);
        assert_eq!(ten.window.p99_us, Some(989));
        assert_eq!(&*ten.label, "10s");
        // Late for the 1 s window only: the 10 s window [10 s, 20 s) is open.
        let r = a.apply(&ok(1001, T0 + 10 * S - 1, 0), 0, 1001, &mut out);
        assert_eq!((r.late, r.late_mask), (2, 0b11), "both closed at 10 s");
        a.apply(&ok(1002, T0 + 11 * S, 0), 0, 1002, &mut out);
        let r = a.apply(&ok(1003, T0 + 10 * S + 500_000, 0), 0, 1003, &mut out);
        assert_eq!((r.applied, r.late_mask), (1, 0b01));
    }

    #[test]
    fn replicas_are_windowed_separately() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        a.apply(&view("r1", 1, T0, 5, MeasureStatus::Ok), 0, 0, &mut out);
        a.apply(&view("r2", 1, T0, 7, MeasureStatus::Ok), 1, 0, &mut out);
        // r1's watermark moves; r2's window stays open.
        a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].window.replica, "r1");
        assert_eq!(a.holds().collect::<Vec<_>>(), vec![(0, 1), (1, 0)]);
    }

    #[test]
    fn silent_replica_closes_by_wall_clock() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        a.set_now(T0 + 10);
        a.apply(&ok(1, T0, 5), 0, 0, &mut out);
        a.close_idle(T0 + S + 4 * S, 5 * S, &mut out);
        assert!(out.is_empty());
        a.close_idle(T0 + S + 5 * S, 5 * S, &mut out);
        assert_eq!(out.len(), 1);
        // And a straggler for it now is late.
        let r = a.apply(&ok(2, T0 + 10, 5), 0, 1, &mut out);
        assert_eq!(r.late, 1);
    }

    #[test]
    fn a_lost_partition_drops_its_windows_and_resets_its_keys() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        a.apply(&view("r1", 1, T0, 5, MeasureStatus::Ok), 0, 0, &mut out);
        a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
        a.apply(&view("r2", 1, T0, 7, MeasureStatus::Ok), 1, 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(a.forget_partitions(&[0]), 1);
        assert_eq!(a.open_windows(), 1);
        assert_eq!(a.holds().collect::<Vec<_>>(), vec![(1, 0)]);
        // Partition 0 comes back and is replayed from its committed offset: nothing is late.
        let r = a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
        assert_eq!((r.applied, r.late), (1, 0));
    }

    #[test]
    fn a_backlog_being_replayed_is_not_idle() {
        let mut a = windows(&[1000], 0);
        let mut out = Vec::new();
        // An hour after these heartbeats, the processor catches up on them.
        let now = T0 + 3_600 * S;
        a.set_now(now);
        a.apply(&ok(1, T0, 5), 0, 0, &mut out);
        a.close_idle(now + 20_000, 5 * S, &mut out);
        assert!(out.is_empty(), "records still arriving for this replica");
        a.apply(&ok(2, T0 + 500_000, 5), 0, 1, &mut out);
        // Then the replica's records stop: idle after idle_us without arrivals.
        a.close_idle(now + 4 * S, 5 * S, &mut out);
        assert!(out.is_empty());
        a.close_idle(now + 20_000 + 5 * S, 5 * S, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].window.count, 2);
    }

    #[test]
    fn flushed_windows_are_skipped_on_replay() {
        let mut a = windows(&[1000, 10_000], 0);
        a.restore_flushed("main", "r1", S, T0 + S, Some(200));
        let mut out = Vec::new();
        let r = a.apply(&ok(150, T0 + 1_500_000, 5), 0, 0, &mut out);
        assert_eq!(
            (r.replayed, r.applied),
            (1, 1),
            "1 s flushed; 10 s still open"
        );
        a.apply(&ok(201, T0 + 2 * S, 5), 0, 1, &mut out);
        a.apply(&ok(300, T0 + 3 * S, 5), 0, 2, &mut out);
        let first = out.iter().find(|c| c.window.window_us == S).unwrap();
        assert_eq!(first.window.window_start_us, T0 + 2 * S);
        assert_eq!(
            first.window.missing, 0,
            "boundary gap from the restored last seq"
        );
    }
}
