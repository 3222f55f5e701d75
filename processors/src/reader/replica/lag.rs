//! Live lag: how far behind the replica is right now, known between measurements.
//!
//! lag(t) = the age, on the primary's clock, of the oldest announced heartbeat the replica
//! does not show yet at t; 0 when it shows every one. It is what pt-heartbeat's `now - ts`
//! approximates, without its sampling error, and it is known while a stall is still going on
//! (a measurement is only known when the stall ends). A heartbeat counts only once the replica
//! was seen not to show it after its commit: a wait for it that gave up (waits give up every
//! 250 ms or two intervals, see `waits.rs`), a read that showed an older one, or a wait armed
//! before its commit still unanswered `NOT_SHOWN_AFTER_US` after it. A heartbeat the reader has
//! not looked at yet (a backlog after its start) may well be visible, and counting it would be
//! the phantom lag of a late start. While a heartbeat is awaited the tracker
//! wakes every `LAG_REFRESH_US` (the shell refreshes the gauge at every event); while the lag
//! exceeds `LAG_SAMPLE_AFTER_US` it publishes a `pending` record for that oldest heartbeat (its
//! delay so far) every `LAG_SAMPLE_EVERY_US`, so windows and alerts see the stall on time.

use super::{Awaited, Command, Tracker};
use millilag_core::events::{MeasureStatus, ReplicaDelay};

/// A wait unanswered this long after both its arming and the commit says the replica does not
/// show the heartbeat (an answer takes a round trip).
const NOT_SHOWN_AFTER_US: i64 = 20_000;
/// How fresh the lag is kept while a heartbeat is awaited.
const LAG_REFRESH_US: i64 = 100_000;
/// How often a lagging replica's lag is published.
const LAG_SAMPLE_EVERY_US: i64 = 250_000;
/// Lag beyond which it is published: well above the steady-state lag (a few ms) and the Kafka
/// transit (5-10 ms), well below any useful alert threshold.
pub(super) const LAG_SAMPLE_AFTER_US: i64 = 100_000;

#[derive(Debug, Default)]
pub(super) struct LagClock {
    /// Next refresh (local), while a heartbeat is awaited.
    next_tick_at: i64,
    /// Last `pending` record published (local).
    last_sample_at: Option<i64>,
}

impl<T> Tracker<T> {
    /// The replica's lag at the last event, in microseconds.
    pub fn lag_us(&self) -> i64 {
        self.oldest_not_shown()
            .map_or(0, |a| (self.primary_now() - a.event.committed_at_us).max(0))
    }

    /// The oldest awaited heartbeat the replica was seen not to show.
    fn oldest_not_shown(&self) -> Option<&Awaited<T>> {
        self.awaited.values().find(|a| self.seen_not_shown(a))
    }

    fn seen_not_shown(&self, a: &Awaited<T>) -> bool {
        let commit = a.event.committed_at_us;
        if let Some(key) = &a.key {
            if self.waits.not_reached(key).is_some() {
                return true;
            }
            // Armed ahead of the commit: blocking since then (a wait armed after the commit,
            // e.g. for a backlog, may have answered already, its answer not handled yet).
            let commit_local = self.clock.to_local(commit);
            if self.waits.armed_at(key).is_some_and(|armed| {
                armed < commit_local && self.now - commit_local > NOT_SHOWN_AFTER_US
            }) {
                return true;
            }
        }
        self.poll
            .last_read
            .is_some_and(|r| r.seq < a.event.seq && r.earliest_us > commit)
    }

    /// A heartbeat is now awaited where none was: the lag needs refreshing from now on.
    pub(super) fn start_lag_clock(&mut self) {
        if self.awaited.is_empty() {
            self.lag.next_tick_at = self.now + LAG_REFRESH_US;
        }
    }

    pub(super) fn next_lag_tick(&self) -> Option<i64> {
        (!self.awaited.is_empty()).then_some(self.lag.next_tick_at)
    }

    pub(super) fn on_lag_tick(&mut self) {
        if self.awaited.is_empty() || self.now < self.lag.next_tick_at {
            return;
        }
        self.lag.next_tick_at = self.now + LAG_REFRESH_US;
        let lag = self.lag_us();
        let due = self
            .lag
            .last_sample_at
            .is_none_or(|t| self.now - t >= LAG_SAMPLE_EVERY_US);
        if lag < LAG_SAMPLE_AFTER_US || !due {
            return;
        }
        let Some(a) = self.oldest_not_shown() else {
            return;
        };
        let record = ReplicaDelay {
            cluster: self.who.cluster.clone(),
            replica: self.who.replica.clone(),
            primary: a.event.primary.clone(),
            seq: a.event.seq,
            committed_at_us: a.event.committed_at_us,
            delay_us: lag,
            uncertainty_us: self.clock_uncertainty(),
            method: a.method(),
            status: MeasureStatus::Pending,
            upper_bound: false,
            observed_at_us: self.primary_now(),
            reader_id: self.who.reader_id.clone(),
            queries: 0,
        };
        self.lag.last_sample_at = Some(self.now);
        self.out.push(Command::Publish {
            record,
            ticket: None,
        });
    }
}
