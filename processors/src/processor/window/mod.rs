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
mod live;
mod open;

pub use hold::Hold;
pub use live::LiveLag;
pub use open::nearest_rank;

use super::input::DelayView;
use live::{CloseCtx, IntervalEstimate};
use millilag_core::events::{DelayWindow, MeasureStatus};
use open::OpenWindow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A replica's (cluster, replica) names.
pub type KeyName = (Arc<str>, Arc<str>);

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
    /// It was a live-lag sample (status pending).
    pub lag_sample: bool,
}

/// Empty windows of a silent or lagging replica are filled in (count 0, see `live.rs`) only
/// within this horizon: after its last record, and before now. A replica gone for good, or a
/// backlog hours old being replayed, does not make hours of empty windows.
const FILL_HORIZON_US: i64 = 600_000_000;

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
    /// The reader's latest live-lag sample, while the replica lags.
    lag: Option<LiveLag>,
    /// The interval its writer announces (heartbeat-set), preferred to the estimate.
    announced_interval_us: i64,
    /// A record of it came since this processor owns its partition (not only a flush mark
    /// read at start): the replica is measured, and silence from it means something.
    seen: bool,
    interval: IntervalEstimate,
    lanes: Vec<Lane>,
}

impl KeyState {
    fn close_ctx(&self, silent: bool) -> CloseCtx {
        CloseCtx {
            lag: self.lag,
            interval_us: if self.announced_interval_us > 0 {
                self.announced_interval_us
            } else {
                self.interval.get()
            },
            silent,
        }
    }
}

/// One configured window length.
#[derive(Debug, Clone)]
pub struct Spec {
    pub len_us: i64,
    /// "1s", "10s", "1m", "1m30s": the `window` tag, Graphite path element and metric label.
    pub label: Arc<str>,
}

impl Spec {
    pub fn new(len: std::time::Duration) -> Spec {
        let len_us = i64::try_from(len.as_micros()).unwrap_or(i64::MAX);
        Spec {
            len_us,
            label: crate::processor::sinks::window_label(len_us).into(),
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
            lag: None,
            announced_interval_us: 0,
            seen: false,
            interval: IntervalEstimate::default(),
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
        let k = self.intern(r.cluster, r.replica);
        let key = &mut self.keys[k];
        key.last_arrival_us = self.now_us;
        key.partition = partition;
        key.seen = true;
        if r.status == MeasureStatus::Pending {
            // A live-lag sample, not a measurement of its heartbeat: every heartbeat committed
            // before it was taken is reported or not visible yet, so the watermark moves with
            // it and the replica's windows close on time during a stall.
            let as_of = r.observed_at_us;
            if key.lag.is_none_or(|l| as_of >= l.as_of_us) {
                key.lag = Some(LiveLag {
                    oldest_commit_us: r.committed_at_us,
                    as_of_us: as_of,
                });
            }
            if as_of > key.max_event_us {
                key.max_event_us = as_of;
                self.close_key(k, as_of.saturating_sub(self.lateness_us), false, out);
            }
            return Applied {
                lag_sample: true,
                ..Applied::default()
            };
        }
        let t = r.event_time_us();
        let mut result = Applied::default();
        key.interval.observe(r.seq, t);
        if r.status == MeasureStatus::Ok && key.lag.is_some_and(|l| t >= l.oldest_commit_us) {
            // The replica shows the oldest heartbeat the lag was about: it moved on.
            key.lag = None;
        }
        let watermark_before = key.max_event_us.saturating_sub(self.lateness_us);
        for (i, spec) in self.specs.iter().enumerate() {
            let lane = &mut key.lanes[i];
            let start = align_down(t, spec.len_us);
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
            self.close_key(k, watermark, false, out);
        }
        result
    }

    /// The wall clock (microseconds) for arrival stamps; the run loop sets it every tick.
    pub fn set_now(&mut self, now_us: i64) {
        self.now_us = now_us;
    }

    /// Close the windows of silent keys: no record for `idle_us` (wall clock) and the window
    /// ended `idle_us` or more before `now_us` (compared with primary-clock event time),
    /// filling in the empty windows since their last record. A replica with no newer record
    /// never moves its watermark; one that is merely being replayed from a backlog keeps
    /// receiving records and is left to its watermark.
    pub fn close_idle(&mut self, now_us: i64, idle_us: i64, out: &mut Vec<Closed>) {
        self.now_us = self.now_us.max(now_us);
        let limit = now_us.saturating_sub(idle_us);
        for k in 0..self.keys.len() {
            if self.keys[k].last_arrival_us > limit {
                continue;
            }
            self.close_key(k, limit, true, out);
        }
    }

    /// Forget replicas silent (wall clock, no record) for `retention` with nothing open or held,
    /// unless `keep` says otherwise (an incident still open on it): a churn of replica names
    /// (pod IPs) must not grow memory without bound. Returns the names forgotten.
    pub fn prune_silent(
        &mut self,
        now_us: i64,
        retention_us: i64,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<KeyName> {
        let limit = now_us.saturating_sub(retention_us);
        let mut gone = Vec::new();
        let mut k = 0;
        while k < self.keys.len() {
            let key = &self.keys[k];
            let idle = key.last_arrival_us < limit && key.lanes.iter().all(|l| l.open.is_empty());
            if !idle || keep(&key.cluster, &key.replica) {
                k += 1;
                continue;
            }
            let key = self.keys.swap_remove(k);
            if let Some(m) = self.index.get_mut(&*key.cluster) {
                m.remove(&*key.replica);
                if m.is_empty() {
                    self.index.remove(&*key.cluster);
                }
            }
            // The key that took its slot keeps its name: point the index at its new id.
            if let Some(moved) = self.keys.get(k) {
                if let Some(id) = self
                    .index
                    .get_mut(&*moved.cluster)
                    .and_then(|m| m.get_mut(&*moved.replica))
                {
                    *id = k as u32;
                }
            }
            gone.push((key.cluster, key.replica));
        }
        gone
    }

    /// Replicas known here (tests).
    #[cfg(test)]
    pub fn known(&self) -> usize {
        self.keys.len()
    }

    /// Close every open window (tests and benchmarks: end of input).
    pub fn close_all(&mut self, out: &mut Vec<Closed>) {
        for k in 0..self.keys.len() {
            self.close_key(k, i64::MAX, false, out);
        }
    }

    /// Close key `k`'s windows that end at or before `limit`, and fill in the empty ones among
    /// them (within [`FILL_HORIZON_US`]). `silent`: no record came to move the watermark.
    fn close_key(&mut self, k: usize, limit: i64, silent: bool, out: &mut Vec<Closed>) {
        let key = &mut self.keys[k];
        let ctx = key.close_ctx(silent);
        // Empty windows are filled within the horizon of both clocks, so a wild time from
        // Kafka (or a wall clock far from the records') never means millions of windows.
        let fill_from = self
            .now_us
            .max(key.max_event_us)
            .saturating_sub(FILL_HORIZON_US);
        let fill_until = key.max_event_us.saturating_add(FILL_HORIZON_US);
        let can_fill = key.max_event_us > i64::MIN && limit < i64::MAX;
        for (i, spec) in self.specs.iter().enumerate() {
            let lane = &mut key.lanes[i];
            loop {
                // The next window to close: the oldest open one, or an empty one right after
                // the last closed window.
                let front = lane.open.front().map(|w| w.start);
                let empty_next = (can_fill && lane.closed_until > 0)
                    .then(|| lane.closed_until.max(align_down(fill_from, spec.len_us)))
                    .filter(|s| *s < fill_until && front.is_none_or(|f| *s < f));
                let Some(start) = empty_next.or(front) else {
                    break;
                };
                let end = start.saturating_add(spec.len_us);
                if end > limit {
                    break;
                }
                let prev_last = match lane.last_closed {
                    Some((s, last)) if s.saturating_add(spec.len_us) == start => last,
                    _ => None,
                };
                if empty_next == Some(start) {
                    let window =
                        open::empty_window(&key.cluster, &key.replica, start, spec.len_us, &ctx);
                    lane.closed_until = end;
                    // No seq to carry: heartbeats neither seen nor counted missing here (still
                    // pending, or counted from the interval) must not show as a gap later.
                    lane.last_closed = Some((start, None));
                    out.push(Closed {
                        window,
                        hold: Hold::default(),
                        last_seq: None,
                        label: spec.label.clone(),
                    });
                    continue;
                }
                let Some(mut w) = lane.open.pop_front() else {
                    break;
                };
                self.open_count -= 1;
                let (window, last_seq) =
                    w.summarize(&key.cluster, &key.replica, spec.len_us, prev_last, &ctx);
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
    /// partition comes back its records are windowed afresh. Returns the windows dropped and
    /// the (cluster, replica) of every key that moved.
    pub fn forget_partitions(&mut self, partitions: &[i32]) -> (usize, Vec<KeyName>) {
        let mut dropped = 0;
        let mut moved_keys = Vec::new();
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
            key.lag = None;
            key.seen = false;
            moved_keys.push((key.cluster.clone(), key.replica.clone()));
        }
        self.open_count -= dropped;
        (dropped, moved_keys)
    }

    /// The heartbeat interval `cluster`'s writer announces: it says how many heartbeats a
    /// window should have better than the commit times do.
    pub fn set_interval(&mut self, cluster: &str, interval_us: i64) {
        let Some(replicas) = self.index.get(cluster) else {
            return;
        };
        for k in replicas.values() {
            self.keys[*k as usize].announced_interval_us = interval_us;
        }
    }

    /// The newest event time seen for `cluster`/`replica` (its watermark before lateness).
    pub fn newest(&self, cluster: &str, replica: &str) -> Option<i64> {
        let k = *self.index.get(cluster)?.get(replica)? as usize;
        Some(self.keys[k].max_event_us).filter(|t| *t > i64::MIN)
    }

    /// The replicas measured here (see `KeyState::seen`), with the partition and the wall
    /// clock of their last record.
    pub fn replicas_seen(&self) -> impl Iterator<Item = (&str, &str, i32, i64)> + '_ {
        self.keys
            .iter()
            .filter(|k| k.seen)
            .map(|k| (&*k.cluster, &*k.replica, k.partition, k.last_arrival_us))
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
mod proptests;
#[cfg(test)]
mod tests;

/// The start of the `len`-long window that holds `t`.
fn align_down(t: i64, len: i64) -> i64 {
    // Saturating: times come from Kafka (the run loop refuses absurd ones; this never wraps).
    t.div_euclid(len).saturating_mul(len)
}
