//! Reads of the heartbeat row: when to read (poll mode, catch-up after a stall) and what a read
//! saw.
//!
//! The writer's schedule is drift-free, so the events tell when each heartbeat is due
//! ([`Schedule`]); poll mode reads from just before that moment until the heartbeat shows,
//! backing off with how late it is. A read that sees the row's seq move brackets every
//! heartbeat that appeared since the previous read.

use super::{us, Command, Tracker};
use crate::reader::gtid::GtidKey;
use crate::reader::timing;
use millilag_core::events::HeartbeatSet;
use millilag_core::retry::{Backoff, RetryPolicy};
use std::collections::{BTreeMap, VecDeque};
use tracing::warn;

/// Most seqs one read may record as newly seen (a read after a long gap says little anyway).
const MAX_SIGHTING_SPAN: i64 = 100_000;
/// How early polling resumes before the writer's next tick (covers the clock-offset error and a
/// late timer).
const RESUME_MARGIN_US: i64 = 2_000;
/// Poll gap while a heartbeat is overdue: this fraction of how late it is.
const OVERDUE_GAP_FRACTION: i64 = 50;
/// A writer whose last event is older than this is not announcing: its next heartbeat is not
/// awaited by reads (a heartbeat whose event arrived still is, until its timeout).
const WRITER_SILENT_AFTER_US: i64 = 1_000_000;
/// Events the tick-grid estimate is taken over (a writer that skipped a tick or took over moves
/// the grid; after this many events the old estimate is gone).
const GRID_EVENTS: usize = 64;
/// Catch-up hands back to the armed waits after this long without progress (at least two
/// heartbeat intervals): the replica stalled again, or applies too slowly for reads to help.
const STAGNANT_FOR_US: i64 = 20_000;

/// The writer's schedule, as the events tell it.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// The primary's server id (the heartbeat row to read).
    pub server_id: Option<i64>,
    /// When the last event arrived (local): a writer still announcing has heartbeats due.
    last_event_at: Option<i64>,
    pub interval_us: i64,
    /// The latest event's (seq, commit time): heartbeat n is due at that commit +
    /// (n - seq) * interval.
    latest: Option<(i64, i64)>,
    /// Poll mode: recent estimates of the writer's tick grid origin (primary clock), one per
    /// event: when its UPDATE was sent (commit time minus the commit round trip) minus
    /// seq * interval. A late tick only makes an estimate later, so the smallest is the grid,
    /// and heartbeat n cannot commit before origin + n * interval.
    grid_origins: VecDeque<i64>,
}

impl Schedule {
    pub fn on_event(&mut self, e: &HeartbeatSet, now: i64, poll_mode: bool) {
        self.server_id = Some(e.server_id);
        self.last_event_at = Some(now);
        if self.interval_us != e.interval_us {
            self.grid_origins.clear();
        }
        self.interval_us = e.interval_us;
        if poll_mode && e.interval_us > 0 {
            if self.grid_origins.len() == GRID_EVENTS {
                self.grid_origins.pop_front();
            }
            self.grid_origins.push_back(
                e.committed_at_us
                    .saturating_sub(e.commit_rtt_us)
                    .saturating_sub(e.seq.saturating_mul(e.interval_us)),
            );
        }
        if self.latest.is_none_or(|(s, _)| e.seq > s) {
            self.latest = Some((e.seq, e.committed_at_us));
        }
    }

    /// The highest seq announced so far.
    pub fn latest_seq(&self) -> Option<i64> {
        self.latest.map(|(s, _)| s)
    }

    fn announcing(&self, now: i64) -> bool {
        self.last_event_at
            .is_some_and(|t| now - t < WRITER_SILENT_AFTER_US)
    }

    /// Intervals begun between the latest announced commit and `primary_now`, a part counting
    /// as one: commits sit a variable commit latency after their tick, so when the latest one
    /// was slow, whole intervals would count one heartbeat too few, and with one wait per
    /// replica the next heartbeat would go unarmed until it had already replicated.
    pub fn intervals_begun_since_latest(&self, primary_now: i64) -> i64 {
        match self.latest {
            Some((_, commit)) if self.interval_us > 0 => {
                let elapsed = primary_now.saturating_sub(commit).max(0);
                elapsed / self.interval_us + i64::from(elapsed % self.interval_us != 0)
            }
            _ => 0,
        }
    }
}

/// The latest read of the heartbeat row, in primary-clock microseconds. Where in its round
/// trip a read looked at the table is unknown, so it is kept as the interval it must lie in:
/// no earlier than the request's arrival, no later than the answer's departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LastRead {
    pub earliest_us: i64,
    pub latest_us: i64,
    pub seq: i64,
}

#[derive(Debug)]
pub(super) struct Poller {
    pub last_read: Option<LastRead>,
    /// When to read next (local).
    pub next_poll: Option<i64>,
    gap_us: i64,
    /// Reads since the last measured heartbeat (each record counts its queries).
    pub since_hit: i32,
    /// The row could not be read (a server error): no read before this.
    retry_at: Option<i64>,
    backoff: Backoff,
}

impl Poller {
    pub fn new(gap_us: i64) -> Poller {
        Poller {
            last_read: None,
            next_poll: None,
            gap_us,
            since_hit: 0,
            retry_at: None,
            backoff: RetryPolicy::RECONNECT.backoff(),
        }
    }

    /// Read as soon as possible (keeping an earlier read that is already due).
    pub fn poll_now(&mut self, now: i64) {
        self.next_poll = Some(self.next_poll.map_or(now, |t| t.min(now)));
    }

    /// A wait that returned is a read: the replica showed `seq` at `at` (primary clock).
    pub fn note_wait_as_read(&mut self, at: i64, seq: i64) {
        self.last_read = Some(LastRead {
            earliest_us: at,
            latest_us: at,
            seq,
        });
    }
}

impl<T> Tracker<T> {
    /// Start one read of the heartbeat row; its answer resolves what it shows.
    pub(super) fn start_read(&mut self) {
        self.poll.next_poll = None;
        let Some(server_id) = self.schedule.server_id else {
            return;
        };
        if let Some(at) = self.poll.retry_at.filter(|at| *at > self.now) {
            self.poll.next_poll = Some(at);
            return;
        }
        self.out.push(Command::Read { server_id });
    }

    pub(super) fn on_read(
        &mut self,
        sent_at: i64,
        returned_at: i64,
        seen_seq: i64,
        server_at: Option<i64>,
    ) {
        if self.poll.retry_at.take().is_some() {
            self.poll.backoff.reset();
        }
        self.poll.since_hit += 1;
        let one_way = self.link.one_way_us;
        // The replica's clock says when it read; otherwise the read happened somewhere in its
        // round trip.
        let read = match server_at.and_then(|t| self.replica_to_primary(t, sent_at, returned_at)) {
            Some(at) => LastRead {
                earliest_us: at,
                latest_us: at,
                seq: seen_seq,
            },
            None => LastRead {
                earliest_us: self.clock.to_primary(sent_at + one_way),
                latest_us: self
                    .clock
                    .to_primary((returned_at - one_way).max(sent_at + one_way)),
                seq: seen_seq,
            },
        };
        let prev = self.poll.last_read;
        self.note_row_look(read);
        let progressed = prev.is_none_or(|p| seen_seq > p.seq);
        tracing::debug!(replica = %self.who.replica, seen_seq, rtt = returned_at - sent_at, ?prev, "Read.");
        let catch_up = self.catch_up_progress.is_some();
        let ready: Vec<i64> = self
            .awaited
            .iter()
            .filter(|(s, p)| (catch_up || p.key.is_none()) && **s <= seen_seq)
            .map(|(s, _)| *s)
            .collect();
        for seq in ready {
            self.try_resolve(seq);
        }
        self.waits.note_row_seq(seen_seq, read.latest_us);
        if let Some(mut progress_at) = self.catch_up_progress {
            if progressed {
                progress_at = self.now;
                self.catch_up_progress = Some(progress_at);
            }
            let stagnant_for = STAGNANT_FOR_US.max(2 * self.schedule.interval_us.max(0));
            let behind = self
                .awaited
                .iter()
                .any(|(s, p)| p.key.is_some() && *s > seen_seq);
            if behind && self.now - progress_at < stagnant_for {
                self.poll.next_poll = Some(self.now);
                return;
            }
            // Caught up, or stalled again (the armed waits catch the next resumption).
            self.end_catch_up();
        }
        if self.poll.next_poll.is_none() {
            self.schedule_overdue_poll(seen_seq);
        }
    }

    /// The replica was seen showing heartbeat `look.seq` and nothing later (a read of the row,
    /// or the position a GTID wait began at): what appeared since the previous look appeared
    /// after that look (no earlier than its request arrived) and before this one answered.
    /// Kept for heartbeats still awaited or not announced yet; the others are reported. A look
    /// older than the latest one known (a wait that began before a read answered) adds nothing.
    pub(super) fn note_row_look(&mut self, look: LastRead) {
        if let Some(p) = self.poll.last_read {
            if look.latest_us < p.latest_us {
                return;
            }
            if look.seq > p.seq && look.seq.saturating_sub(p.seq) <= MAX_SIGHTING_SPAN {
                let obs = timing::read_observation(Some(p.earliest_us), look.latest_us);
                let appeared = p.seq + 1..=look.seq;
                let awaited: Vec<i64> = self.awaited.range(appeared).map(|(s, _)| *s).collect();
                let unannounced = self
                    .schedule
                    .latest_seq()
                    .map_or(p.seq, |s| s.max(p.seq))
                    .saturating_add(1);
                for s in awaited.into_iter().chain(unannounced..=look.seq) {
                    self.sightings.entry(s).or_insert(obs);
                }
            }
        }
        self.poll.last_read = Some(look);
    }

    fn end_catch_up(&mut self) {
        self.catch_up_progress = None;
        for s in self.waits.sequences() {
            self.top_up(&s);
        }
        // Stalled again with heartbeats still awaited: the next one the replica applies is the
        // oldest of them, and its own wait times the resumption (reads would bracket it only
        // as tightly as they are frequent). Its return starts the next catch-up.
        let mut oldest: BTreeMap<&str, &GtidKey> = BTreeMap::new();
        for k in self.awaited.values().filter_map(|a| a.key.as_ref()) {
            let e = oldest.entry(&*k.sequence).or_insert(k);
            if k.n < e.n {
                *e = k;
            }
        }
        let unarmed: Vec<GtidKey> = oldest
            .into_values()
            .filter(|k| !self.waits.is_armed(k))
            .cloned()
            .collect();
        for k in unarmed {
            self.arm(k);
        }
    }

    pub(super) fn on_read_failed(&mut self, why: String, connection_lost: bool) {
        if connection_lost {
            self.connection_failed();
            return;
        }
        // The server refused the read (the table is missing, a privilege): the connection is
        // fine, and reading again at once would fail the same way.
        if self.poll.retry_at.is_none() {
            warn!(replica = %self.who.replica, error = %why, "Cannot read the heartbeat table on this replica; retrying with backoff (GTID waits go on).");
        }
        let retry_at = self.now + us(self.poll.backoff.next_delay());
        self.poll.retry_at = Some(retry_at);
        if self.catch_up_progress.is_some() {
            self.end_catch_up();
        }
        if self.awaited.values().any(|p| p.key.is_none()) {
            self.poll.next_poll = Some(retry_at);
        }
    }

    /// Keep reading while a heartbeat is overdue: one whose event is waiting, or, in poll mode
    /// while the writer is announcing, the next one on its schedule (its event may still be on
    /// the way: events arrive in fetch batches, and a stalled replica must be watched from the
    /// moment the heartbeat was due, not from when its event arrives). The gap grows with how
    /// late it is (1/`OVERDUE_GAP_FRACTION` of it, within `poll_interval`..`poll_max_interval`),
    /// so the bracket around the moment it shows stays a small fraction of the delay.
    fn schedule_overdue_poll(&mut self, seen_seq: i64) {
        let oldest_waiting = self
            .awaited
            .values()
            .filter(|p| p.key.is_none())
            .map(|p| p.event.committed_at_us)
            .min();
        let interval = self.schedule.interval_us;
        let next_due = match self.schedule.grid_origins.iter().min() {
            Some(origin)
                if self.poll_mode() && self.schedule.announcing(self.now) && interval > 0 =>
            {
                Some(origin.saturating_add(seen_seq.saturating_add(1).saturating_mul(interval)))
            }
            _ => None,
        };
        let Some(since) = [oldest_waiting, next_due].into_iter().flatten().min() else {
            return;
        };
        let now = self.primary_now();
        let poll_interval = us(self.settings.poll_interval);
        if since > now + RESUME_MARGIN_US {
            // Not due yet (the last one just appeared): pause until just before it is, never
            // longer than an interval.
            self.poll.gap_us = poll_interval;
            let resume = self
                .clock
                .to_local(since.saturating_sub(RESUME_MARGIN_US))
                .min(self.now + interval.max(0));
            self.poll.next_poll = Some(resume.max(self.now + poll_interval));
            return;
        }
        let late = now.saturating_sub(since).max(0);
        let max_gap = us(self.settings.poll_max_interval).max(poll_interval);
        self.poll.gap_us = (late / OVERDUE_GAP_FRACTION).clamp(poll_interval, max_gap);
        self.poll.next_poll = Some(self.now + self.poll.gap_us);
    }

    /// Poll mode: be polling when the next heartbeat is due, so it is timed from its first
    /// moment rather than from its event's arrival.
    pub(super) fn anticipate(&mut self, committed_at_us: i64, interval_us: i64) {
        self.poll.gap_us = us(self.settings.poll_interval);
        if interval_us <= 0 {
            return;
        }
        let due = self
            .clock
            .to_local(committed_at_us.saturating_add(interval_us))
            .saturating_sub(self.poll.gap_us);
        let at = due.max(self.now + self.poll.gap_us);
        self.poll.next_poll = Some(self.poll.next_poll.map_or(at, |t| t.min(at)));
    }
}
