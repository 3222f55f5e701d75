//! The run loop's hook for statsd timers: every exact measurement, once, as it is decoded.
//!
//! Why a hook and not the windows: sinks see closed windows, i.e. summaries, and the exact
//! delays behind them stay inside `window/`. Sending them at close would also stamp them a
//! window length (plus lateness) late and in bursts, while statsd buckets a timer by the flush
//! in which it arrives — as millipede's users had it, each measurement should arrive when it
//! is made. And the windows do not see every measurement: at the end of a stall the replica's
//! real delays arrive after their windows closed (those counted them at their delay so far),
//! yet they are exactly what a statsd timer must show.
//!
//! So the run loop hands every decoded record not already flushed before a restart to
//! [`Timings::record`]; a [`TimingTap`] per sink keeps the exact ones (status ok, not an upper
//! bound) that its sample keeps, skips a heartbeat it already timed (a second reader group's
//! copy: a ring of the last [`DEDUP_SEQS`] seqs per replica), and [`Timings::flush`] (every
//! run-loop tick) passes them to the sink's task through a bounded queue. A full queue drops
//! the chunk and counts it: the run loop never waits for statsd.
//!
//! Sampling is by heartbeat: a seq is kept when a hash of it falls under the rate, so every
//! replica keeps the same heartbeats (comparable) and two processors keep the same ones.

use super::lines::{Namer, TimerName};
use super::StatsdMetrics;
use crate::processor::input::DelayView;
use millilag_core::events::MeasureStatus;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Measurements held before the next tick hands them over; beyond this (a backlog being
/// read), a chunk leaves at once.
const CHUNK: usize = 4_096;
/// Seqs remembered per replica to skip a heartbeat's second copy: the other reader group's
/// copy arrives within seconds, and 4096 heartbeats are 41 s at 10 ms (32 KiB per replica).
pub const DEDUP_SEQS: usize = 4_096;

/// One measurement for the sink's task.
pub type Timing = (Arc<TimerName>, i64);

/// One statsd sink's tap.
pub struct TimingTap {
    namer: Namer,
    /// A seq is kept when `splitmix64(seq) <= threshold`.
    threshold: u64,
    /// cluster -> replica -> its timer, built once per replica.
    series: HashMap<String, HashMap<String, Series>>,
    buffer: Vec<Timing>,
    tx: mpsc::Sender<Vec<Timing>>,
    dropped: Counter,
}

impl TimingTap {
    /// A tap feeding `tx` (the sink's task reads the other end; see [`super::spawn`]).
    pub fn new(
        namer: Namer,
        sample_rate: f64,
        tx: mpsc::Sender<Vec<Timing>>,
        sink: &str,
        metrics: &StatsdMetrics,
    ) -> TimingTap {
        TimingTap {
            namer,
            threshold: threshold(sample_rate),
            series: HashMap::new(),
            buffer: Vec::new(),
            tx,
            dropped: metrics.dropped(sink, "timings", "queue_full"),
        }
    }

    fn record(&mut self, v: &DelayView<'_>) {
        if v.status != MeasureStatus::Ok || v.upper_bound || !sampled(v.seq, self.threshold) {
            return;
        }
        let series = match self
            .series
            .get_mut(v.cluster)
            .and_then(|m| m.get_mut(v.replica))
        {
            Some(s) => s,
            None => self
                .series
                .entry(v.cluster.to_string())
                .or_default()
                .entry(v.replica.to_string())
                .or_insert_with(|| Series::new(self.namer.timer(v.cluster, v.replica))),
        };
        if !series.first_time(v.seq) {
            return;
        }
        self.buffer.push((series.name.clone(), v.delay_us));
        if self.buffer.len() >= CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK.min(256)));
        if let Err(e) = self.tx.try_send(chunk) {
            let n = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => {
                    c.len()
                }
            };
            self.dropped.inc_by(n as u64);
        }
    }
}

/// One replica's timer name and the seqs it timed lately.
struct Series {
    name: Arc<TimerName>,
    /// `seen[seq % DEDUP_SEQS] == seq` once `seq` was timed.
    seen: Box<[i64]>,
}

impl Series {
    fn new(name: TimerName) -> Series {
        Series {
            name: Arc::new(name),
            seen: vec![i64::MIN; DEDUP_SEQS].into_boxed_slice(),
        }
    }

    /// True the first time `seq` comes (within the last [`DEDUP_SEQS`] heartbeats).
    fn first_time(&mut self, seq: i64) -> bool {
        let slot = &mut self.seen[seq.rem_euclid(DEDUP_SEQS as i64) as usize];
        if *slot == seq {
            return false;
        }
        *slot = seq;
        true
    }
}

/// Every statsd sink's tap; empty (and free) when no sink sends timings.
#[derive(Default)]
pub struct Timings(pub Vec<TimingTap>);

impl Timings {
    /// A decoded record (not one replayed into windows flushed before a restart).
    #[inline]
    pub fn record(&mut self, v: &DelayView<'_>) {
        for t in &mut self.0 {
            t.record(v);
        }
    }

    /// Hand what was collected to the sinks' tasks.
    pub fn flush(&mut self) {
        for t in &mut self.0 {
            t.flush();
        }
    }
}

fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        // `as` saturates; rate > 0 is checked in the config.
        (rate * u64::MAX as f64) as u64
    }
}

fn sampled(seq: i64, threshold: u64) -> bool {
    threshold == u64::MAX || splitmix64(seq as u64) <= threshold
}

/// SplitMix64's output function: consecutive seqs map to well-spread values.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::config::StatsdProtocol;
    use prometheus_client::registry::Registry;

    fn view(seq: i64, status: MeasureStatus, upper_bound: bool) -> DelayView<'static> {
        DelayView {
            cluster: "main",
            replica: if seq % 2 == 0 { "r1" } else { "r2" },
            seq,
            committed_at_us: 0,
            delay_us: seq * 1_000,
            status,
            upper_bound,
            observed_at_us: 0,
        }
    }

    fn tap(rate: f64, queue: usize) -> (TimingTap, mpsc::Receiver<Vec<Timing>>, StatsdMetrics) {
        let metrics = StatsdMetrics::new(&mut Registry::default());
        let (tx, rx) = mpsc::channel(queue);
        let namer = Namer::new("m", StatsdProtocol::Statsd, rate);
        (
            TimingTap::new(namer, rate, tx, "statsd[0]", &metrics),
            rx,
            metrics,
        )
    }

    #[test]
    fn only_exact_measurements_become_timers() {
        let (t, mut rx, _) = tap(1.0, 4);
        let mut timings = Timings(vec![t]);
        timings.record(&view(1, MeasureStatus::Ok, false));
        timings.record(&view(2, MeasureStatus::Ok, true));
        timings.record(&view(3, MeasureStatus::Timeout, false));
        timings.record(&view(4, MeasureStatus::Ok, false));
        timings.flush();
        let got = rx.try_recv().unwrap();
        let lines: Vec<String> = got
            .iter()
            .map(|(n, us)| {
                let mut s = String::new();
                n.line(&mut s, *us);
                s
            })
            .collect();
        assert_eq!(lines, ["m.main.r2.delay:1|ms", "m.main.r1.delay:4|ms"]);
        timings.flush();
        assert!(rx.try_recv().is_err(), "nothing new, nothing sent");
    }

    #[test]
    fn each_heartbeat_is_timed_once_per_replica() {
        let (t, mut rx, _) = tap(1.0, 4);
        let mut timings = Timings(vec![t]);
        let mut second_group = view(4, MeasureStatus::Ok, false);
        second_group.delay_us = 9_999;
        let mut other_cluster = view(4, MeasureStatus::Ok, false);
        other_cluster.cluster = "other";
        for v in [
            view(4, MeasureStatus::Ok, false),
            second_group,
            other_cluster,
            // A timeout, then the real delay: the real one is a measurement.
            view(6, MeasureStatus::Timeout, false),
            view(6, MeasureStatus::Ok, false),
            // An upper bound, then an exact reading from the other group.
            view(8, MeasureStatus::Ok, true),
            view(8, MeasureStatus::Ok, false),
            // Far enough on to reuse seq 4's slot, then seq 4 again: remembered no more.
            view(4 + DEDUP_SEQS as i64, MeasureStatus::Ok, false),
            view(4 + 2 * DEDUP_SEQS as i64, MeasureStatus::Ok, false),
        ] {
            timings.record(&v);
        }
        timings.flush();
        let got: Vec<(String, i64)> = rx
            .try_recv()
            .unwrap()
            .into_iter()
            .map(|(n, us)| (n.head.clone(), us))
            .collect();
        let r1 = "m.main.r1.delay:".to_string();
        assert_eq!(
            got,
            [
                (r1.clone(), 4_000),
                ("m.other.r1.delay:".to_string(), 4_000),
                (r1.clone(), 6_000),
                (r1.clone(), 8_000),
                (r1.clone(), (4 + DEDUP_SEQS as i64) * 1_000),
                (r1, (4 + 2 * DEDUP_SEQS as i64) * 1_000),
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (t, mut rx, metrics) = tap(1.0, 1);
        let mut timings = Timings(vec![t]);
        for round in 0..3 {
            timings.record(&view(2 * round + 1, MeasureStatus::Ok, false));
            timings.record(&view(2 * round + 2, MeasureStatus::Ok, false));
            timings.flush();
        }
        assert_eq!(rx.try_recv().unwrap().len(), 2);
        assert!(rx.try_recv().is_err());
        assert_eq!(
            metrics.dropped("statsd[0]", "timings", "queue_full").get(),
            4
        );
    }

    #[test]
    fn sampling_keeps_the_rate_by_heartbeat() {
        for rate in [0.01, 0.1, 0.5] {
            let th = threshold(rate);
            let kept = (0..100_000).filter(|s| sampled(*s, th)).count() as f64;
            assert!(
                (kept / 100_000.0 - rate).abs() < 0.01,
                "rate {rate}: {kept}"
            );
            assert_eq!(sampled(42, th), sampled(42, th), "deterministic");
        }
        assert!((0..1_000).all(|s| sampled(s, threshold(1.0))));
    }
}
