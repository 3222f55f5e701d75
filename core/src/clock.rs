//! One clock for all measurements: the primary's.
//!
//! Writers stamp commits with the primary's own `SYSDATE(6)`. A reader, possibly on another
//! host, converts its local readings to the primary's clock with an NTP-style estimate: a
//! `SELECT UNIX_TIMESTAMP(SYSDATE(6))` round trip brackets the server's reading, the midpoint
//! is the best local equivalent, and half the round trip bounds the error. Keeping the
//! lowest-RTT samples keeps that bound small.

use crate::db::unix_text_to_us;
use mysql_async::prelude::*;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Local wall clock, microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One offset sample: server clock minus local clock at the round trip's midpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetSample {
    pub offset_us: i64,
    pub rtt_us: i64,
    pub taken_at_us: i64,
}

impl OffsetSample {
    /// From one exchange (NTP's four stamps): sent at `sent` and answered at `received` on the
    /// local clock; the server's clock read `began` and `ended` inside it. Time the server
    /// spent (a wait that blocked) is not round trip, so any statement that reports both
    /// stamps is a sample, however long it ran.
    pub fn from_exchange(sent: i64, began: i64, ended: i64, received: i64) -> Self {
        OffsetSample {
            offset_us: ((began - sent) + (ended - received)) / 2,
            rtt_us: ((received - sent) - (ended - began)).max(0),
            taken_at_us: received,
        }
    }
}

/// Take one sample on `conn` (whose server is the clock of interest).
pub async fn sample_offset(
    conn: &mut mysql_async::Conn,
) -> Result<OffsetSample, mysql_async::Error> {
    let t0 = now_us();
    let server: Option<String> = conn
        .query_first("SELECT UNIX_TIMESTAMP(SYSDATE(6))")
        .await?;
    let t1 = now_us();
    let server_us = server.as_deref().and_then(unix_text_to_us).ok_or_else(|| {
        mysql_async::Error::Other("UNIX_TIMESTAMP(SYSDATE(6)) returned no time".into())
    })?;
    Ok(OffsetSample {
        offset_us: server_us - (t0 + t1) / 2,
        rtt_us: t1 - t0,
        taken_at_us: t1,
    })
}

/// Keeps the last `capacity` samples and answers with the lowest-RTT one: queueing delays only
/// ever add to a round trip, so the fastest sample's midpoint is the most trustworthy.
#[derive(Debug, Clone)]
pub struct OffsetEstimator {
    samples: VecDeque<OffsetSample>,
    capacity: usize,
    /// The sample [`Self::estimate`] answers with while the clock runs forward: kept as samples
    /// come and go, since asking is far more frequent (every answer a reader handles) than
    /// scanning them all is cheap.
    best: Option<OffsetSample>,
}

/// Orders samples as their bounds in [`OffsetEstimator::estimate`] do at any one later moment:
/// a bound is half the round trip plus the age over the drift rate, and every sample ages at
/// the same rate, so the order does not change as time passes.
fn bound_rank(s: &OffsetSample) -> i128 {
    i128::from((s.rtt_us + 1) / 2) * i128::from(DRIFT_US_PER_SAMPLE_US) - i128::from(s.taken_at_us)
}

impl OffsetEstimator {
    pub fn new(capacity: usize) -> Self {
        OffsetEstimator {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            best: None,
        }
    }

    pub fn add(&mut self, s: OffsetSample) {
        let mut rescan = false;
        if self.samples.len() == self.capacity {
            rescan = self.samples.pop_front() == self.best;
        }
        self.samples.push_back(s);
        if rescan {
            self.best = self.samples.iter().min_by_key(|s| bound_rank(s)).copied();
        } else if self.best.is_none_or(|b| bound_rank(&s) < bound_rank(&b)) {
            self.best = Some(s);
        }
    }

    pub fn best(&self) -> Option<OffsetSample> {
        self.samples.iter().min_by_key(|s| s.rtt_us).copied()
    }

    /// The estimate at local time `now_us`: the sample with the smallest bound then, where a
    /// sample's bound is half its round trip plus how far two clocks may have drifted since
    /// it was taken. Unknown (never sampled): offset 0, bound [`UNKNOWN_CLOCK_UNCERTAINTY_US`].
    pub fn estimate(&self, now_us: i64) -> ClockEstimate {
        let bound = |s: &OffsetSample| {
            (s.rtt_us + 1) / 2 + (now_us - s.taken_at_us).max(0) / DRIFT_US_PER_SAMPLE_US
        };
        // A sample from "the future" (the local clock was stepped back) has no age: the order
        // kept in `best` does not hold then.
        let stepped_back = self.samples.back().is_some_and(|s| s.taken_at_us > now_us);
        let chosen = if stepped_back {
            self.samples.iter().min_by_key(|s| bound(s)).copied()
        } else {
            self.best
        };
        match chosen {
            Some(s) => ClockEstimate {
                offset_us: s.offset_us,
                uncertainty_us: bound(&s).min(UNKNOWN_CLOCK_UNCERTAINTY_US),
                known: true,
            },
            None => ClockEstimate {
                offset_us: 0,
                uncertainty_us: UNKNOWN_CLOCK_UNCERTAINTY_US,
                known: false,
            },
        }
    }

    /// Local microseconds to primary-clock microseconds, and the uncertainty (see
    /// [`Self::estimate`]).
    pub fn to_primary(&self, local_us: i64) -> (i64, i64) {
        let e = self.estimate(now_us());
        (local_us + e.offset_us, e.uncertainty_us)
    }
}

/// Two clocks may drift apart by this much per second since they were compared: 100 ppm, what
/// an undisciplined crystal allows (NTP-disciplined ones stay well within it).
const DRIFT_US_PER_SAMPLE_US: i64 = 10_000;

/// The bound given when a clock was never sampled (offset assumed 0): hosts kept by NTP agree
/// far better than this, and nothing finer is claimed without a sample.
pub const UNKNOWN_CLOCK_UNCERTAINTY_US: i64 = 1_000_000;

/// One clock against the local one: other = local + `offset_us`, within `uncertainty_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockEstimate {
    pub offset_us: i64,
    pub uncertainty_us: i64,
    /// False until a sample was taken.
    pub known: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_sample_loses_to_a_fresh_one_as_the_clocks_may_drift() {
        let mut e = OffsetEstimator::new(8);
        assert!(!e.estimate(0).known);
        e.add(OffsetSample {
            offset_us: 10,
            rtt_us: 100,
            taken_at_us: 0,
        });
        e.add(OffsetSample {
            offset_us: 20,
            rtt_us: 2_000,
            taken_at_us: 60_000_000,
        });
        // At 1 min the 100 us sample may have drifted 6 ms: the fresh 1 ms bound wins.
        let at = e.estimate(60_000_000);
        assert_eq!(
            (at.offset_us, at.uncertainty_us, at.known),
            (20, 1_000, true)
        );
        // Just after the first sample, it wins.
        assert_eq!(e.estimate(1_000).offset_us, 10);
        // Never sampled again for long: the bound grows, capped at "unknown".
        let mut old = OffsetEstimator::new(8);
        old.add(OffsetSample {
            offset_us: 10,
            rtt_us: 100,
            taken_at_us: 0,
        });
        assert_eq!(
            old.estimate(3 * 3_600_000_000).uncertainty_us,
            UNKNOWN_CLOCK_UNCERTAINTY_US
        );
    }

    #[test]
    fn the_kept_best_sample_is_the_one_a_full_scan_finds() {
        // Samples of every round trip, one every 10 ms, in a window of 16: at each moment the
        // estimate must be what scanning the window gives (to the microsecond of rounding).
        let mut e = OffsetEstimator::new(16);
        let mut window: VecDeque<OffsetSample> = VecDeque::new();
        let mut x: u64 = 12_345;
        for i in 0..2_000i64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let s = OffsetSample {
                offset_us: i,
                rtt_us: ((x >> 33) % 5_000) as i64,
                taken_at_us: i * 10_000,
            };
            e.add(s);
            if window.len() == 16 {
                window.pop_front();
            }
            window.push_back(s);
            let now = i * 10_000 + (x % 20_000_000) as i64;
            let bound = |s: &OffsetSample| (s.rtt_us + 1) / 2 + (now - s.taken_at_us) / 10_000;
            let want = window.iter().map(bound).min().unwrap();
            let got = e.estimate(now);
            assert!(
                (got.uncertainty_us - want).abs() <= 1,
                "at {now}: {got:?}, a scan gives {want}"
            );
        }
    }

    #[test]
    fn an_exchange_leaves_out_the_servers_own_time() {
        // Server 1 s ahead; 100 us each way; the statement ran 5 s on the server.
        let s = OffsetSample::from_exchange(0, 1_000_100, 6_000_100, 5_000_200);
        assert_eq!((s.offset_us, s.rtt_us), (1_000_000, 200));
        // A point reading (began = ended) is the classic midpoint sample.
        let p = OffsetSample::from_exchange(10, 60, 60, 110);
        assert_eq!((p.offset_us, p.rtt_us), (0, 100));
    }

    #[test]
    fn lowest_rtt_sample_wins_and_old_ones_expire() {
        let mut e = OffsetEstimator::new(3);
        assert_eq!(e.to_primary(100), (100, UNKNOWN_CLOCK_UNCERTAINTY_US));
        e.add(OffsetSample {
            offset_us: 500,
            rtt_us: 900,
            taken_at_us: 1,
        });
        e.add(OffsetSample {
            offset_us: 40,
            rtt_us: 80,
            taken_at_us: 2,
        });
        e.add(OffsetSample {
            offset_us: 300,
            rtt_us: 400,
            taken_at_us: 3,
        });
        assert_eq!(e.estimate(3).offset_us, 40);
        assert_eq!(e.estimate(3).uncertainty_us, 40);
        e.add(OffsetSample {
            offset_us: 10,
            rtt_us: 1000,
            taken_at_us: 4,
        });
        e.add(OffsetSample {
            offset_us: 20,
            rtt_us: 1000,
            taken_at_us: 5,
        });
        // The 80 us sample fell out of the window.
        assert_eq!(e.best().unwrap().offset_us, 300);
    }
}
