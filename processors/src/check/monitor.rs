//! `millilag monitor`: a round every `interval` until stopped (or `count` rounds), one line per
//! replica per round, like `pt-heartbeat --monitor`: the current delay, then its averages over
//! the last 1, 5 and 15 minutes, then the state.

use super::verdict::{self, Line};
use super::{Checker, Options};
use millilag_core::config::Config;
use millilag_core::shutdown::Shutdown;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// The averaging spans, pt-heartbeat's `--frames` default (1m, 5m, 15m).
pub const FRAMES_US: [i64; 3] = [60_000_000, 300_000_000, 900_000_000];

/// One replica's recent delays, for the moving averages.
#[derive(Debug, Default)]
pub struct Averages {
    /// (primary-clock time, delay), oldest first, no older than the longest frame.
    samples: VecDeque<(i64, i64)>,
}

impl Averages {
    pub fn add(&mut self, at_us: i64, delay_us: i64) {
        self.samples.push_back((at_us, delay_us));
        let horizon = at_us - FRAMES_US[FRAMES_US.len() - 1];
        while self.samples.front().is_some_and(|(t, _)| *t < horizon) {
            self.samples.pop_front();
        }
    }

    /// Mean delay over each frame ending at `now_us` (None while a frame has no sample).
    pub fn means(&self, now_us: i64) -> [Option<i64>; 3] {
        FRAMES_US.map(|frame| {
            let (sum, n) = self
                .samples
                .iter()
                .filter(|(t, _)| *t >= now_us - frame)
                .fold((0i64, 0i64), |(s, n), (_, d)| (s + d, n + 1));
            (n > 0).then(|| sum / n)
        })
    }
}

fn seconds(us: Option<i64>) -> String {
    us.map_or("-".into(), |d| format!("{:.3}s", d as f64 / 1e6))
}

/// `<time> cluster replica delay [ 1m, 5m, 15m ] STATE detail`.
pub fn monitor_line(now_us: i64, l: &Line, means: [Option<i64>; 3]) -> String {
    let time = millilag_core::db::pt_heartbeat_ts(now_us);
    format!(
        "{}Z {} {} {} [ {}, {}, {} ] {} {}",
        &time[..23],
        l.cluster,
        l.replica,
        seconds(l.delay_us),
        seconds(means[0]),
        seconds(means[1]),
        seconds(means[2]),
        l.state.as_str(),
        l.detail
    )
}

/// Run rounds until `shutdown` or `count` rounds; lines go to `out`. Err only for a config
/// that names no cluster to check.
pub async fn monitor(
    config: &Config,
    opts: &Options,
    interval: Duration,
    count: Option<u64>,
    mut shutdown: Shutdown,
    out: &mut (dyn Write + Send),
) -> Result<(), String> {
    let mut checker = Checker::new(config, opts.cluster.as_deref())?;
    let mut averages: BTreeMap<(String, String), Averages> = BTreeMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let now = millilag_core::clock::now_us();
        for reading in checker.round().await {
            for l in verdict::assess(&reading, opts.thresholds) {
                let avg = averages
                    .entry((l.cluster.clone(), l.replica.clone()))
                    .or_default();
                if let Some(d) = l.delay_us {
                    avg.add(now, d);
                }
                // A closed pipe (`| head`) ends the monitor like a stop.
                if writeln!(out, "{}", monitor_line(now, &l, avg.means(now))).is_err() {
                    return Ok(());
                }
            }
        }
        let _ = out.flush();
        rounds += 1;
        if count.is_some_and(|c| rounds >= c) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verdict::State;

    #[test]
    fn averages_cover_each_frame_and_forget_what_is_older_than_the_longest() {
        let mut a = Averages::default();
        let min = 60_000_000;
        a.add(0, 900);
        a.add(10 * min, 300);
        a.add(14 * min + 30_000_000, 100);
        let now = 15 * min;
        assert_eq!(a.means(now), [Some(100), Some(200), Some(433)]);
        a.add(16 * min, 500);
        // The first sample fell out of 15 minutes.
        assert_eq!(a.means(16 * min), [Some(500), Some(300), Some(300)]);
        assert_eq!(Averages::default().means(now), [None, None, None]);
    }

    #[test]
    fn monitor_lines_read_like_pt_heartbeat() {
        let l = Line {
            cluster: "main".into(),
            replica: "db2:3306".into(),
            delay_us: Some(1_500),
            uncertainty_us: 200,
            state: State::Ok,
            detail: "caught up (seq 7)".into(),
        };
        assert_eq!(
            monitor_line(1_000_123_456, &l, [Some(2_000), None, Some(10_000)]),
            "1970-01-01T00:16:40.123Z main db2:3306 0.002s [ 0.002s, -, 0.010s ] OK caught up (seq 7)"
        );
    }
}
