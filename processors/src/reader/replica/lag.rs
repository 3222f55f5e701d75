//! Live lag: how far behind the replica is right now, known between measurements.
//!
//! lag(t) = the age, on the primary's clock, of the oldest announced heartbeat the replica
//! does not show yet at t; 0 when it shows every one. It is what pt-heartbeat's `now - ts`
//! approximates, without its sampling error, and it is known while a stall is still going on
//! (a measurement is only known when the stall ends). While a heartbeat is awaited the tracker
//! wakes every `LAG_REFRESH_US` (the shell refreshes the gauge at every event); while the lag
//! exceeds `LAG_SAMPLE_AFTER_US` it publishes a `pending` record for that oldest heartbeat (its
//! delay so far) every `LAG_SAMPLE_EVERY_US`, so windows and alerts see the stall on time.

use super::{Command, Tracker};
use millilag_core::events::{MeasureStatus, ReplicaDelay};

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
        self.awaited
            .values()
            .next()
            .map_or(0, |a| (self.primary_now() - a.event.committed_at_us).max(0))
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
        let Some(a) = self.awaited.values().next() else {
            return;
        };
        self.lag.last_sample_at = Some(self.now);
        let record = ReplicaDelay {
            cluster: self.who.cluster.clone(),
            replica: self.who.replica.clone(),
            primary: a.event.primary.clone(),
            seq: a.event.seq,
            committed_at_us: a.event.committed_at_us,
            delay_us: lag,
            uncertainty_us: self.clock.uncertainty_us,
            method: a.method(),
            status: MeasureStatus::Pending,
            upper_bound: false,
            observed_at_us: self.primary_now(),
            reader_id: self.who.reader_id.clone(),
            queries: 0,
        };
        self.out.push(Command::Publish {
            record,
            ticket: None,
        });
    }
}
