//! Processor hot path: decode + window pre-encoded `replica-delay` records on one thread.
//!
//! `cargo run --release -p millilag-processors --example processor_throughput [MILLIONS] [--statsd-timings]`
//!
//! With `--statsd-timings` the loop also feeds a statsd sink's timing tap (every exact
//! measurement, as `timings = true` does), its queue drained by the loop itself: the cost the
//! hook adds to the run loop (formatting and UDP happen on the sink's own task).
//! Input as in production: 10 replicas of one cluster, a heartbeat every 10 ms, delays of a
//! few ms, 1% non-ok statuses, 1% duplicates (a second reader group), windows 1 s, 10 s and
//! 1 min with 2 s lateness. The records are encoded before the clock starts; the timed loop
//! is exactly what the run loop does per record (decode into a borrowed view, apply to every
//! window length, collect closed windows). Reports records/s on one core (target: 500k).

use millilag_core::config::StatsdProtocol;
use millilag_core::events::{MeasureMethod, MeasureStatus, Record, ReplicaDelay};
use millilag_processors::processor::input::decode;
use millilag_processors::processor::sinks::statsd::lines::Namer;
use millilag_processors::processor::sinks::statsd::timings::{TimingTap, Timings};
use millilag_processors::processor::sinks::statsd::StatsdMetrics;
use millilag_processors::processor::window::{Spec, Windows};
use std::time::{Duration, Instant};

const REPLICAS: i64 = 10;
const INTERVAL_US: i64 = 10_000;

fn main() {
    let millions: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.0);
    let with_timings = std::env::args().any(|a| a == "--statsd-timings");
    let n = (millions * 1e6) as usize;
    let replicas: Vec<String> = (0..REPLICAS)
        .map(|i| format!("10.0.0.{}:3306", i + 2))
        .collect();
    let t0: i64 = 1_763_000_000_000_000;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    print!("encoding {n} records... ");
    let started = Instant::now();
    let mut records: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut i = 0i64;
    while records.len() < n {
        let seq = i / REPLICAS + 1;
        let replica = &replicas[(i % REPLICAS) as usize];
        let t = t0 + (seq - 1) * INTERVAL_US;
        let r = next();
        let status = if r % 100 == 0 {
            MeasureStatus::Timeout
        } else {
            MeasureStatus::Ok
        };
        let delay_us = 800 + (r >> 8) as i64 % 4_000;
        let rec = ReplicaDelay {
            cluster: "main".into(),
            replica: replica.clone(),
            primary: "10.0.0.1:3306".into(),
            seq,
            committed_at_us: t,
            delay_us,
            uncertainty_us: 120,
            method: MeasureMethod::GtidWait,
            status,
            upper_bound: r % 7 == 0,
            observed_at_us: t + delay_us,
            reader_id: "reader-a".into(),
            queries: 1,
        };
        let bytes = rec.encode().expect("encodes");
        if r % 100 == 1 {
            records.push(bytes.clone()); // the second reader group's copy
        }
        records.push(bytes);
        i += 1;
    }
    records.truncate(n);
    println!("{:?}", started.elapsed());

    let specs = [1, 10, 60]
        .iter()
        .map(|s| Spec::new(Duration::from_secs(*s)))
        .collect();
    let mut windows = Windows::new(specs, Duration::from_secs(2));
    let mut closed = Vec::with_capacity(1024);
    let (mut closed_windows, mut duplicates, mut failures) = (0usize, 0usize, 0usize);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let mut timings = Timings::default();
    if with_timings {
        let metrics = StatsdMetrics::new(&mut Default::default());
        let namer = Namer::new("millilag", StatsdProtocol::Statsd, 1.0);
        timings
            .0
            .push(TimingTap::new(namer, 1.0, tx, "statsd[0]", &metrics));
    }
    let mut timers = 0usize;
    let started = Instant::now();
    for (offset, bytes) in records.iter().enumerate() {
        match decode(bytes) {
            Ok(view) => {
                let r = windows.apply(&view, 0, offset as i64, &mut closed);
                duplicates += usize::from(r.duplicate > 0);
                if r.replayed == 0 {
                    timings.record(&view);
                }
            }
            Err(_) => failures += 1,
        }
        if closed.len() >= 1024 {
            closed_windows += closed.len();
            closed.clear();
        }
        if offset % 4096 == 0 {
            timings.flush();
            while let Ok(chunk) = rx.try_recv() {
                timers += chunk.len();
            }
        }
    }
    timings.flush();
    while let Ok(chunk) = rx.try_recv() {
        timers += chunk.len();
    }
    let elapsed = started.elapsed();
    windows.close_all(&mut closed);
    closed_windows += closed.len();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "decode + window: {n} records in {elapsed:?} = {:.0}k records/s on one core ({:.0} ns/record); \
         {closed_windows} windows closed, {duplicates} duplicates, {failures} decode failures, \
         {timers} statsd timings",
        rate / 1e3,
        elapsed.as_nanos() as f64 / n as f64
    );
}
