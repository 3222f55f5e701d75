//! When the sinks fall behind, stop reading instead of piling up windows.
//!
//! More than `processor.max_pending_windows` closed windows waiting for the sinks, or a sink
//! whose queue is full, pauses every assigned partition, and every partition assigned while
//! paused (see `consumer/rebalance.rs`); consumption resumes once the backlog is down to half
//! of the limit, so it does not flap around it. Nothing is dropped: a sink outage only delays.

use crate::consumer::Source;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct Backpressure {
    paused: bool,
}

impl Backpressure {
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether consumption should be paused with `pending` windows waiting and the sinks'
    /// queues with or without `room`, if that differs from now.
    fn change(&self, pending: usize, max: usize, room: bool) -> Option<bool> {
        let max = max.max(1);
        let want_pause = !room
            || if self.paused {
                pending > max / 2
            } else {
                pending > max
            };
        (want_pause != self.paused).then_some(want_pause)
    }

    /// Pause or resume `source` as `pending` and `room` require; `gauge` shows 1 while paused.
    pub fn update(
        &mut self,
        source: &Source,
        pending: usize,
        max: usize,
        room: bool,
        gauge: &Gauge,
    ) {
        let Some(pause) = self.change(pending, max, room) else {
            return;
        };
        match source.set_paused(pause) {
            Ok(()) => {
                self.paused = pause;
                gauge.set(i64::from(pause));
                if pause {
                    warn!(
                        pending,
                        max,
                        sink_queue_full = !room,
                        "Sinks are behind: consumption paused."
                    );
                } else {
                    info!(pending, "Sinks caught up: consumption resumed.");
                }
            }
            Err(e) => warn!(error = %e, "Pausing/resuming partitions failed."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_the_limit_and_resumes_at_half() {
        let mut b = Backpressure::default();
        assert_eq!(b.change(100, 100, true), None, "at the limit");
        assert_eq!(b.change(101, 100, true), Some(true));
        b.paused = true;
        assert_eq!(b.change(51, 100, true), None, "still above half");
        assert_eq!(b.change(50, 100, true), Some(false));
    }

    #[test]
    fn a_full_sink_queue_pauses_whatever_the_count() {
        let mut b = Backpressure::default();
        assert_eq!(b.change(0, 100, false), Some(true));
        b.paused = true;
        assert_eq!(b.change(0, 100, false), None, "still full");
        assert_eq!(b.change(0, 100, true), Some(false));
    }

    #[test]
    fn a_zero_limit_counts_as_one() {
        let b = Backpressure::default();
        assert_eq!(b.change(1, 0, true), None);
        assert_eq!(b.change(2, 0, true), Some(true));
    }
}
