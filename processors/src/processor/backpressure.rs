//! When the sinks fall behind, stop reading instead of piling up windows.
//!
//! More than `processor.max_pending_windows` closed windows waiting for the sinks pauses every
//! assigned partition; consumption resumes once the backlog is down to half of that, so it
//! does not flap around the limit. Nothing is dropped: a sink outage only delays.

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

    /// Whether consumption should be paused with `pending` windows waiting, if that differs
    /// from now.
    fn change(&self, pending: usize, max: usize) -> Option<bool> {
        let max = max.max(1);
        let want_pause = if self.paused {
            pending > max / 2
        } else {
            pending > max
        };
        (want_pause != self.paused).then_some(want_pause)
    }

    /// Pause or resume `source` as `pending` requires; `gauge` shows 1 while paused.
    pub fn update(&mut self, source: &Source, pending: usize, max: usize, gauge: &Gauge) {
        let Some(pause) = self.change(pending, max) else {
            return;
        };
        match source.set_paused(pause) {
            Ok(()) => {
                self.paused = pause;
                gauge.set(i64::from(pause));
                if pause {
                    warn!(pending, max, "Sinks are behind: consumption paused.");
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
        assert_eq!(b.change(100, 100), None, "at the limit");
        assert_eq!(b.change(101, 100), Some(true));
        b.paused = true;
        assert_eq!(b.change(51, 100), None, "still above half");
        assert_eq!(b.change(50, 100), Some(false));
    }

    #[test]
    fn a_zero_limit_counts_as_one() {
        let b = Backpressure::default();
        assert_eq!(b.change(1, 0), None);
        assert_eq!(b.change(2, 0), Some(true));
    }
}
