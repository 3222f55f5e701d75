//! What a window knows beyond its records when it closes: the replica's live lag and the
//! writer's interval.
//!
//! While a replica lags, the reader publishes `pending` samples: at `as_of` the replica did not
//! show the heartbeat committed at `oldest_commit` yet, nor (in order) any later one. A window
//! closing then holds heartbeats that are not visible yet; each counts at its delay so far
//! (`as_of` minus its commit, a lower bound) in the window's quantiles and max, so a stall is
//! seen while it lasts. They are not in `count` (not measured) and not `missing` (they exist
//! and will be measured). Heartbeats the writer's interval says should exist and that neither
//! a record nor the lag accounts for are `missing`: a dead writer, or every reader down.

/// The reader's latest live-lag sample for one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLag {
    /// Commit time of the oldest heartbeat the replica did not show at `as_of_us`.
    pub oldest_commit_us: i64,
    /// When the sample was taken (primary clock).
    pub as_of_us: i64,
}

/// The writer's heartbeat interval, estimated from consecutive seqs' commit times: the median
/// of the last few steps, so a late tick or an outage (the seq continues after it) does not
/// move it.
#[derive(Debug, Clone, Copy, Default)]
pub struct IntervalEstimate {
    last: Option<(i64, i64)>,
    steps: [i64; STEPS],
    n: usize,
}

const STEPS: usize = 7;

impl IntervalEstimate {
    pub fn observe(&mut self, seq: i64, commit_us: i64) {
        if let Some((s, c)) = self.last {
            if seq <= s {
                return;
            }
            if seq == s.saturating_add(1) && commit_us > c {
                self.steps[self.n % STEPS] = commit_us.saturating_sub(c);
                self.n += 1;
            }
        }
        self.last = Some((seq, commit_us));
    }

    /// 0 while unknown.
    pub fn get(&self) -> i64 {
        let k = self.n.min(STEPS);
        if k == 0 {
            return 0;
        }
        let mut v = self.steps;
        let v = &mut v[..k];
        v.sort_unstable();
        v[(k - 1) / 2]
    }
}

/// Most heartbeats one window counts as not yet visible (a 1 min window of 1 ms heartbeats).
const MAX_PENDING_PER_WINDOW: i64 = 60_000;

/// What a closing window learns from outside its records.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseCtx {
    pub lag: Option<LiveLag>,
    pub interval_us: i64,
    /// Closed because the replica went silent (no record for `idle_close`), not because
    /// later records moved its watermark: heartbeats after its last record are unaccounted.
    pub silent: bool,
}

impl CloseCtx {
    /// The delays so far of the heartbeats in [start, end) the replica did not show yet,
    /// oldest (largest) first.
    pub fn pending_delays(&self, start: i64, end: i64) -> Vec<i64> {
        let Some(lag) = self.lag else {
            return Vec::new();
        };
        let from = start.max(lag.oldest_commit_us);
        let to = end.min(lag.as_of_us);
        if to <= from {
            return Vec::new();
        }
        // In i128: the times come from Kafka and may be anything; none of this may wrap.
        let (from, to, as_of, step) = (
            i128::from(from),
            i128::from(to),
            i128::from(lag.as_of_us),
            i128::from(self.interval_us),
        );
        let n = if step > 0 {
            ((to - from + step - 1) / step).min(i128::from(MAX_PENDING_PER_WINDOW))
        } else {
            1
        };
        (0..n)
            .map(|i| clamp_i64(as_of - (from + i * step)))
            .collect()
    }

    /// Heartbeats due in (after, end) that neither a record nor the lag accounts for.
    pub fn unaccounted(&self, after: i64, end: i64) -> i64 {
        if self.interval_us <= 0 {
            return 0;
        }
        let end = match self.lag {
            Some(l) if l.oldest_commit_us < end => l.oldest_commit_us.max(after),
            _ => end,
        };
        clamp_i64((i128::from(end) - i128::from(after) - 1) / i128::from(self.interval_us)).max(0)
    }

    /// Heartbeats due in [start, end) that the lag does not account for (an empty window).
    pub fn unaccounted_in(&self, start: i64, end: i64, pending: usize) -> i64 {
        if self.interval_us <= 0 {
            return 0;
        }
        clamp_i64(
            (i128::from(end) - i128::from(start)) / i128::from(self.interval_us) - pending as i128,
        )
        .max(0)
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    #[test]
    fn interval_from_consecutive_seqs_ignores_gaps() {
        let mut e = IntervalEstimate::default();
        e.observe(1, 0);
        e.observe(2, 10 * MS);
        assert_eq!(e.get(), 10 * MS);
        e.observe(5, 100 * MS);
        assert_eq!(e.get(), 10 * MS, "a gap of seqs is not an interval");
        e.observe(4, 40 * MS);
        assert_eq!(e.get(), 10 * MS, "older seqs are ignored");
        e.observe(6, 4_120 * MS);
        assert_eq!(e.get(), 10 * MS, "an outage is one step among several");
        for i in 0..7 {
            e.observe(7 + i, 4_120 * MS + (i + 1) * 20 * MS);
        }
        assert_eq!(e.get(), 20 * MS, "a new interval takes over");
    }

    #[test]
    fn pending_heartbeats_count_at_their_delay_so_far() {
        let ctx = CloseCtx {
            lag: Some(LiveLag {
                oldest_commit_us: 300 * MS,
                as_of_us: 2_000 * MS,
            }),
            interval_us: 100 * MS,
            silent: false,
        };
        // Window [0, 1 s): heartbeats from 300 ms on are not shown: 7 of them.
        let d = ctx.pending_delays(0, 1_000 * MS);
        assert_eq!(d.len(), 7);
        assert_eq!(d[0], 1_700 * MS, "the oldest: 2 s - 300 ms");
        assert_eq!(*d.last().unwrap(), 1_100 * MS);
        // A window after the sample: nothing known.
        assert!(ctx.pending_delays(2_000 * MS, 3_000 * MS).is_empty());
        // Before the oldest: nothing pending.
        assert!(ctx.pending_delays(0, 300 * MS).is_empty());
    }

    #[test]
    fn unaccounted_heartbeats_are_what_the_interval_says_minus_what_lags() {
        let dead_writer = CloseCtx {
            lag: None,
            interval_us: 10 * MS,
            silent: true,
        };
        assert_eq!(dead_writer.unaccounted_in(0, 1_000 * MS, 0), 100);
        // Last record at 500 ms, nothing since: 490, 500.. are due; 510..990 are 49 heartbeats.
        assert_eq!(dead_writer.unaccounted(500 * MS, 1_000 * MS), 49);
        assert_eq!(dead_writer.unaccounted(990 * MS, 1_000 * MS), 0);
        let stalled = CloseCtx {
            lag: Some(LiveLag {
                oldest_commit_us: 510 * MS,
                as_of_us: 3_000 * MS,
            }),
            ..dead_writer
        };
        assert_eq!(
            stalled.unaccounted(500 * MS, 1_000 * MS),
            0,
            "pending, not missing"
        );
        let p = stalled.pending_delays(0, 1_000 * MS).len();
        assert_eq!(p, 49);
        assert_eq!(stalled.unaccounted_in(1_000 * MS, 2_000 * MS, 100), 0);
        let unknown = CloseCtx::default();
        assert_eq!(
            unknown.unaccounted_in(0, 1_000 * MS, 0),
            0,
            "no interval known yet"
        );
    }
}
