//! Sinks: where closed windows go. Each sink runs on its own task, takes batches first in,
//! first out, writes several queued batches in one request when it is behind, and retries a
//! failed write with backoff until it succeeds — it never drops a window and never panics.
//! After a write it acknowledges the batch ids to the run loop, which stores Kafka offsets only
//! once every sink acknowledged (see `offsets.rs`).
//!
//! What the points look like (the same in every sink, so a replay overwrites, never adds):
//!
//! | | InfluxDB (v1 `/write`, v2 `/api/v2/write`) | Graphite plaintext |
//! |---|---|---|
//! | name | measurement `replica_delay` (`measurement` key) | `<prefix>.<cluster>.<replica>.<window>.<field>` |
//! | tags | `cluster`, `replica`, `window` ("1s", "10s", "1m") | in the path; `.`, `:`, ` `, `/` in names become `_` |
//! | fields | `count`, `missing`, `min_us`, `p50_us`, `p90_us`, `p99_us`, `max_us`, `timeouts`, `unreachable`, `replication_stopped`, `skipped`, `upper_bounds`, `duplicates` (integers; the five delay fields are left out when `count` is 0) | same names |
//! | time | window start, milliseconds | window start, seconds |
//!
//! VictoriaMetrics names InfluxDB fields `<measurement>_<field>`, e.g. `replica_delay_p99_us`.
//! Kafka: a `delay-window` record per window, key `cluster/replica`.
//! statsd is best effort and outside this acknowledged chain: see `statsd/`.

pub mod graphite;
pub mod influx;
pub mod kafka;
pub mod statsd;

use super::metrics::SinkMetrics;
use millilag_core::events::DelayWindow;
use millilag_core::retry::RetryPolicy;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

/// Most windows written in one request when a sink catches up.
pub const MAX_WINDOWS_PER_WRITE: usize = 5_000;

/// Closed windows handed to every sink at once.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub windows: Arc<[DelayWindow]>,
}

/// Something that accepts windows. `write` either stores all of them or fails as a whole
/// (points are idempotent, so writing some twice on retry is harmless).
pub trait Sink: Send + 'static {
    fn write<'a>(
        &'a mut self,
        windows: &'a [&'a DelayWindow],
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'a;
}

/// The run loop's side of one sink task.
pub struct SinkHandle {
    pub name: String,
    /// Bounded: the run loop holds closed windows back (and pauses) rather than queue more.
    tx: mpsc::Sender<Batch>,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// The sink's task ended (it only ends when closed, or when it panicked).
    pub fn stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Whether a batch can be queued now.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Queue `batch`; false when the queue is full or the task is gone.
    pub fn send(&self, batch: Batch) -> bool {
        self.tx.try_send(batch).is_ok()
    }

    /// No more batches: the task writes what it has and ends.
    pub fn close(self) -> tokio::task::JoinHandle<()> {
        drop(self.tx);
        self.task
    }
}

/// Start a sink task taking up to `queue` batches ahead. Accepted batch ids go to `acks`.
pub fn spawn<S: Sink>(
    name: String,
    sink: S,
    acks: mpsc::UnboundedSender<u64>,
    metrics: SinkMetrics,
    queue: usize,
) -> SinkHandle {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let span = tracing::info_span!("sink", sink = %name);
    let task = tokio::spawn(run_sink(sink, rx, acks, metrics).instrument(span));
    SinkHandle { name, tx, task }
}

async fn run_sink<S: Sink>(
    mut sink: S,
    mut rx: mpsc::Receiver<Batch>,
    acks: mpsc::UnboundedSender<u64>,
    metrics: SinkMetrics,
) {
    let mut queue: VecDeque<Batch> = VecDeque::new();
    let mut backoff = RetryPolicy::DELIVERY.backoff();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(b) => {
                    metrics.backlog.inc_by(b.windows.len() as i64);
                    queue.push_back(b);
                }
                None => return,
            }
        }
        while let Ok(b) = rx.try_recv() {
            metrics.backlog.inc_by(b.windows.len() as i64);
            queue.push_back(b);
        }
        // Several batches in one write when behind, whole batches only.
        let mut take = 0;
        let mut n = 0;
        for b in &queue {
            if take > 0 && n + b.windows.len() > MAX_WINDOWS_PER_WRITE {
                break;
            }
            take += 1;
            n += b.windows.len();
        }
        let refs: Vec<&DelayWindow> = queue
            .iter()
            .take(take)
            .flat_map(|b| b.windows.iter())
            .collect();
        let mut failed_before = false;
        loop {
            match sink.write(&refs).await {
                Ok(()) => break,
                Err(e) => {
                    metrics.failures.inc();
                    let delay = backoff.next_delay();
                    warn!(error = format!("{e:#}"), windows = refs.len(), retry_in = ?delay, "Sink write failed; retrying.");
                    failed_before = true;
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if failed_before {
            info!(windows = refs.len(), "Sink write succeeded after retries.");
        }
        backoff.reset();
        drop(refs);
        metrics.points.inc_by(n as u64);
        metrics.backlog.dec_by(n as i64);
        for b in queue.drain(..take) {
            if acks.send(b.id).is_err() {
                return;
            }
        }
    }
}

/// `cluster`, `replica` and `window` as one path element each (Graphite) — dots, colons,
/// slashes and spaces would split or break a path.
pub fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' | ':' | ' ' | '/' | '\t' | '\n' => '_',
            c => c,
        })
        .collect()
}

/// The label of a window length as written in tags and paths ("1s", "10s", "1m").
pub fn window_label(window_us: i64) -> String {
    humantime::format_duration(Duration::from_micros(window_us.max(0) as u64)).to_string()
}

/// Integer fields of a window in output order; the delay fields only when present.
pub fn fields(w: &DelayWindow) -> impl Iterator<Item = (&'static str, i64)> + '_ {
    let always = [
        ("count", Some(w.count)),
        ("missing", Some(w.missing)),
        ("min_us", w.min_us),
        ("p50_us", w.p50_us),
        ("p90_us", w.p90_us),
        ("p99_us", w.p99_us),
        ("max_us", w.max_us),
        ("timeouts", Some(w.timeouts)),
        ("unreachable", Some(w.unreachable)),
        ("replication_stopped", Some(w.replication_stopped)),
        ("skipped", Some(w.skipped)),
        ("upper_bounds", Some(w.upper_bounds)),
        ("duplicates", Some(w.duplicates)),
    ];
    always.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Flaky {
        fail_first: usize,
        calls: Arc<AtomicUsize>,
        written: Arc<std::sync::Mutex<Vec<i64>>>,
    }

    impl Sink for Flaky {
        async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> anyhow::Result<()> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                anyhow::bail!("down");
            }
            let mut w = self.written.lock().unwrap();
            w.extend(windows.iter().map(|w| w.window_start_us));
            Ok(())
        }
    }

    pub fn window(start: i64) -> DelayWindow {
        DelayWindow {
            cluster: "main".into(),
            replica: "r1".into(),
            window_start_us: start,
            window_us: 1_000_000,
            count: 1,
            missing: 0,
            min_us: Some(1),
            p50_us: Some(1),
            p90_us: Some(1),
            p99_us: Some(1),
            max_us: Some(1),
            timeouts: 0,
            unreachable: 0,
            replication_stopped: 0,
            skipped: 0,
            upper_bounds: 0,
            duplicates: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_sink_retries_with_backoff_and_loses_nothing() {
        let mut reg = Registry::default();
        let metrics = super::super::metrics::Metrics::new(&mut reg);
        let sm = metrics.sink("flaky");
        let calls = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let h = spawn(
            "flaky".into(),
            Flaky {
                fail_first: 5,
                calls: calls.clone(),
                written: written.clone(),
            },
            ack_tx,
            sm.clone(),
            16,
        );
        let t0 = tokio::time::Instant::now();
        for id in 0..3 {
            h.send(Batch {
                id,
                windows: Arc::from(vec![window(id as i64)]),
            });
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(ack_rx.recv().await.unwrap());
        }
        assert_eq!(got, vec![0, 1, 2], "acks in order");
        assert_eq!(*written.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(sm.failures.get(), 5);
        assert_eq!(sm.points.get(), 3);
        assert_eq!(sm.backlog.get(), 0);
        // 100 + 200 + 400 + 800 + 1600 ms, each with up to 20% jitter.
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(3100) && waited <= Duration::from_millis(3800),
            "{waited:?}"
        );
        h.close().await.unwrap();
    }

    #[test]
    fn names_are_path_safe_and_labels_read_like_the_config() {
        assert_eq!(path_safe("127.0.0.1:3307"), "127_0_0_1_3307");
        assert_eq!(window_label(1_000_000), "1s");
        assert_eq!(window_label(60_000_000), "1m");
        assert_eq!(window_label(100_000), "100ms");
        let mut w = window(0);
        w.count = 0;
        w.min_us = None;
        w.p50_us = None;
        w.p90_us = None;
        w.p99_us = None;
        w.max_us = None;
        let names: Vec<_> = fields(&w).map(|(k, _)| k).collect();
        assert!(!names.contains(&"p99_us") && names.contains(&"count"));
    }
}
