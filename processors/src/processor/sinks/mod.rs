//! Sinks: where closed windows go. Each sink runs on its own task (`task.rs`), takes batches
//! first in, first out, writes several queued batches in one request when it is behind, and
//! retries a failed write with backoff until it succeeds — unless the sink refused it for good
//! (an HTTP 4xx other than 408/429): those windows go to the dead-letter topic (`rejected.rs`).
//! It never drops a window and never panics. Once a batch is settled (written, or its dead
//! letters acknowledged) it acknowledges the batch id to the run loop, which stores Kafka
//! offsets only once every sink acknowledged (see `offsets.rs`).
//!
//! What the points look like (the same in every sink, so a replay overwrites, never adds):
//!
//! | | InfluxDB (v1 `/write`, v2 `/api/v2/write`) | Graphite plaintext |
//! |---|---|---|
//! | name | measurement `replica_delay` (`measurement` key) | `<prefix>.<cluster>.<replica>.<window>.<field>` |
//! | tags | `cluster`, `replica`, `window` ("1s", "10s", "1m"); `,` `=` and spaces escaped | in the path; `.` `:` `/` `;`, whitespace and control characters become `_` |
//! | fields | `count`, `missing`, `min_us`, `p50_us`, `p90_us`, `p99_us`, `max_us`, `timeouts`, `unreachable`, `replication_stopped`, `skipped`, `upper_bounds`, `duplicates` (integers; the five delay fields are left out when `count` is 0) | same names |
//! | time | window start, milliseconds | window start, seconds |
//!
//! VictoriaMetrics names InfluxDB fields `<measurement>_<field>`, e.g. `replica_delay_p99_us`.
//! Kafka: a `delay-window` record per window, key `cluster/replica`.
//! statsd is best effort and outside this acknowledged chain: see `statsd/`.

pub mod graphite;
pub mod influx;
pub mod kafka;
pub mod rejected;
pub mod statsd;
mod task;

use super::metrics::SinkMetrics;
use millilag_core::events::DelayWindow;
use millilag_core::Error;
use rejected::Rejections;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Most windows written in one request when a sink catches up.
pub const MAX_WINDOWS_PER_WRITE: usize = 5_000;

/// Closed windows handed to every sink at once.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: u64,
    pub windows: Arc<[DelayWindow]>,
}

/// Something that accepts windows. `write` either stores all of them or fails as a whole
/// (points are idempotent, so writing some twice on retry is harmless). The error's
/// [`Error::retry_hint`] decides between retrying and dead-lettering.
pub trait Sink: Send + 'static {
    fn write<'a>(
        &'a mut self,
        windows: &'a [&'a DelayWindow],
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
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

/// Start a sink task taking up to `queue` batches ahead. Settled batch ids go to `acks`;
/// refused windows to `rejections`.
pub fn spawn<S: Sink, R: Rejections>(
    name: String,
    sink: S,
    rejections: R,
    acks: mpsc::UnboundedSender<u64>,
    metrics: SinkMetrics,
    queue: usize,
) -> SinkHandle {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let span = tracing::info_span!("sink", sink = %name);
    let task = tokio::spawn(task::run_sink(sink, rejections, rx, acks, metrics).instrument(span));
    SinkHandle { name, tx, task }
}

/// `cluster` or `replica` as one Graphite path element: dots, colons and slashes would split
/// the path, `;` starts Graphite tags, whitespace ends the metric name, a control character
/// (a newline) the line. An empty name (refused upstream) becomes `_` rather than `a..b`.
pub fn path_safe(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| match c {
            '.' | ':' | '/' | ';' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The label of a window length as written in tags and paths ("1s", "10s", "1m", "1m30s"):
/// humantime's text without its spaces, which would end a tag or a metric name.
pub fn window_label(window_us: i64) -> String {
    let d = Duration::from_micros(window_us.max(0) as u64);
    humantime::format_duration(d).to_string().replace(' ', "")
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
mod proptests;
#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_are_path_safe_and_labels_read_like_the_config() {
        assert_eq!(path_safe("127.0.0.1:3307"), "127_0_0_1_3307");
        assert_eq!(window_label(1_000_000), "1s");
        assert_eq!(window_label(60_000_000), "1m");
        assert_eq!(window_label(100_000), "100ms");
        assert_eq!(window_label(90_000_000), "1m30s");
        assert_eq!(path_safe("a;b=c d\te\nf"), "a_b=c_d_e_f");
        assert_eq!(path_safe(""), "_");
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
