//! The task of one sink: batches in first in, first out, several written in one request when
//! the sink is behind, acknowledged in order once settled.
//!
//! A write settles in one of two ways. Accepted: the windows are in the sink. Refused for good
//! (the error's [`RetryHint`](millilag_core::RetryHint) says no retry can help, e.g. an
//! InfluxDB 404 or 422): the windows are handed to [`Rejections`] (the dead-letter topic),
//! counted and logged once per cause, and acknowledged like accepted ones, so offsets move on
//! and the processor does not pause. Anything else (connection refused, a timeout, 5xx, 408,
//! 429) is retried with [`RetryPolicy::DELIVERY`] backoff until it settles; nothing is dropped.
//!
//! When a write that combined several batches is refused, its batches are written again one by
//! one: a 413 (too large) then goes through, and a refusal is pinned on the batch it concerns.

use super::rejected::{status_label, RejectionLog, Rejections};
use super::{Batch, Sink, MAX_WINDOWS_PER_WRITE};
use crate::processor::metrics::SinkMetrics;
use millilag_core::events::DelayWindow;
use millilag_core::retry::{Backoff, RetryPolicy};
use millilag_core::Error;
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub(super) async fn run_sink<S: Sink, R: Rejections>(
    mut sink: S,
    mut rejections: R,
    mut rx: mpsc::Receiver<Batch>,
    acks: mpsc::UnboundedSender<u64>,
    metrics: SinkMetrics,
) {
    let mut queue: VecDeque<Batch> = VecDeque::new();
    let mut backoff = RetryPolicy::DELIVERY.backoff();
    let mut log = RejectionLog::default();
    // Front batches still to be written alone after a combined write was refused.
    let mut one_by_one = 0;
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
        let take = if one_by_one > 0 {
            1
        } else {
            batches_per_write(&queue)
        };
        let refs: Vec<&DelayWindow> = queue
            .iter()
            .take(take)
            .flat_map(|b| b.windows.iter())
            .collect();
        let n = refs.len();
        match write_until_settled(&mut sink, &refs, &mut backoff, &metrics).await {
            Ok(()) => {
                metrics.points.inc_by(n as u64);
            }
            Err(e) if take > 1 => {
                info!(error = %e, batches = take, "Sink refused a combined write; writing its batches one by one.");
                one_by_one = take;
                continue;
            }
            Err(e) => {
                metrics.rejected(&status_label(&e)).inc_by(n as u64);
                if let Some(refused) = log.note(&e, n as u64, tokio::time::Instant::now()) {
                    warn!(error = %e, windows = refused, "Sink refused windows for good; they go to dead-letter (logged once per cause, every 10 minutes while it lasts).");
                }
                rejections.hand_on(&refs, &e).await;
            }
        }
        one_by_one = one_by_one.saturating_sub(take);
        drop(refs);
        metrics.backlog.dec_by(n as i64);
        for b in queue.drain(..take) {
            if acks.send(b.id).is_err() {
                return;
            }
        }
    }
}

/// How many front batches go in one write: whole batches, at most [`MAX_WINDOWS_PER_WRITE`]
/// windows unless the first alone is more.
fn batches_per_write(queue: &VecDeque<Batch>) -> usize {
    let mut take = 0;
    let mut n = 0;
    for b in queue {
        if take > 0 && n + b.windows.len() > MAX_WINDOWS_PER_WRITE {
            break;
        }
        take += 1;
        n += b.windows.len();
    }
    take
}

/// Write until accepted (Ok) or refused for good (Err), retrying everything else.
async fn write_until_settled<S: Sink>(
    sink: &mut S,
    windows: &[&DelayWindow],
    backoff: &mut Backoff,
    metrics: &SinkMetrics,
) -> Result<(), Error> {
    let mut failed_before = false;
    loop {
        let e = match sink.write(windows).await {
            Ok(()) => {
                if failed_before {
                    info!(
                        windows = windows.len(),
                        "Sink write succeeded after retries."
                    );
                }
                backoff.reset();
                return Ok(());
            }
            Err(e) => e,
        };
        let Some(delay) = backoff.after(e.retry_hint()) else {
            backoff.reset();
            return Err(e);
        };
        metrics.failures.inc();
        warn!(error = %e, windows = windows.len(), retry_in = ?delay, "Sink write failed; retrying.");
        failed_before = true;
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::window;
    use super::super::{spawn, Batch, Sink};
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A sink that answers each write with the next scripted outcome (then accepts), refusing
    /// for good any write that holds a window starting at `poison`.
    #[derive(Clone, Default)]
    struct Scripted {
        outcomes: Arc<Mutex<VecDeque<Result<(), Error>>>>,
        poison: Option<i64>,
        /// The window starts of every write attempt.
        attempts: Arc<Mutex<Vec<Vec<i64>>>>,
    }

    impl Sink for Scripted {
        async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> Result<(), Error> {
            let starts: Vec<i64> = windows.iter().map(|w| w.window_start_us).collect();
            self.attempts.lock().unwrap().push(starts.clone());
            if let Some(next) = self.outcomes.lock().unwrap().pop_front() {
                return next;
            }
            match self.poison {
                Some(p) if starts.contains(&p) => Err(Error::http_status(
                    "POST /write",
                    400,
                    "partial write: points beyond retention policy dropped=1",
                )),
                _ => Ok(()),
            }
        }
    }

    /// Records what was handed on, and why.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(i64, String)>>>);

    impl Rejections for Recorded {
        async fn hand_on<'a>(&'a mut self, windows: &'a [&'a DelayWindow], why: &'a Error) {
            let mut r = self.0.lock().unwrap();
            r.extend(windows.iter().map(|w| (w.window_start_us, why.to_string())));
        }
    }

    fn metrics() -> (SinkMetrics, Registry) {
        let mut reg = Registry::default();
        let m = crate::processor::metrics::Metrics::new(&mut reg);
        (m.sink("s"), reg)
    }

    async fn acks(rx: &mut mpsc::UnboundedReceiver<u64>, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        while got.len() < n {
            got.push(rx.recv().await.unwrap());
        }
        got
    }

    fn batch(id: u64) -> Batch {
        Batch {
            id,
            windows: Arc::from(vec![window(id as i64)]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_sink_retries_with_backoff_and_loses_nothing() {
        let (m, _reg) = metrics();
        let sink = Scripted::default();
        let down = || Err(Error::Unreachable("connecting: refused".into()));
        sink.outcomes.lock().unwrap().extend((0..5).map(|_| down()));
        let rejected = Recorded::default();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let h = spawn(
            "s".into(),
            sink.clone(),
            rejected.clone(),
            ack_tx,
            m.clone(),
            16,
        );
        let t0 = tokio::time::Instant::now();
        for id in 0..3 {
            h.send(batch(id));
        }
        assert_eq!(acks(&mut ack_rx, 3).await, vec![0, 1, 2], "acks in order");
        assert_eq!(m.failures.get(), 5);
        assert_eq!(m.points.get(), 3);
        assert_eq!(m.backlog.get(), 0);
        assert!(
            rejected.0.lock().unwrap().is_empty(),
            "nothing dead-lettered"
        );
        // 100 + 200 + 400 + 800 + 1600 ms, each with up to 20% jitter.
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(3100) && waited <= Duration::from_millis(3800),
            "{waited:?}"
        );
        h.close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_handed_on_once_and_acknowledged_without_retries() {
        let (m, _reg) = metrics();
        let sink = Scripted::default();
        let refused = || Err(Error::http_status("POST /write", 404, "database not found"));
        sink.outcomes.lock().unwrap().push_back(refused());
        let rejected = Recorded::default();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let h = spawn(
            "s".into(),
            sink.clone(),
            rejected.clone(),
            ack_tx,
            m.clone(),
            16,
        );
        let t0 = tokio::time::Instant::now();
        h.send(batch(0));
        assert_eq!(acks(&mut ack_rx, 1).await, vec![0]);
        assert_eq!(t0.elapsed(), Duration::ZERO, "no backoff for a refusal");
        h.send(batch(1));
        assert_eq!(acks(&mut ack_rx, 1).await, vec![1]);
        let r = rejected.0.lock().unwrap().clone();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 0);
        assert!(
            r[0].1.contains("HTTP 404: database not found"),
            "{}",
            r[0].1
        );
        assert_eq!(m.rejected("404").get(), 1);
        assert_eq!((m.failures.get(), m.points.get()), (0, 1));
        assert_eq!(sink.attempts.lock().unwrap().len(), 2, "one attempt each");
        h.close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_combined_write_is_retried_batch_by_batch_and_only_the_bad_one_is_dead_lettered(
    ) {
        let (m, _reg) = metrics();
        let sink = Scripted {
            poison: Some(2),
            ..Default::default()
        };
        // Down at first, so the four batches queue up and go in one combined write.
        sink.outcomes
            .lock()
            .unwrap()
            .push_back(Err(Error::Unreachable("timed out".into())));
        let rejected = Recorded::default();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let h = spawn(
            "s".into(),
            sink.clone(),
            rejected.clone(),
            ack_tx,
            m.clone(),
            16,
        );
        h.send(batch(0));
        tokio::task::yield_now().await;
        for id in 1..4 {
            h.send(batch(id));
        }
        assert_eq!(acks(&mut ack_rx, 4).await, vec![0, 1, 2, 3]);
        let starts: Vec<i64> = rejected.0.lock().unwrap().iter().map(|r| r.0).collect();
        assert_eq!(starts, vec![2]);
        assert_eq!(m.points.get(), 3);
        assert_eq!(m.rejected("400").get(), 1);
        assert_eq!(
            *sink.attempts.lock().unwrap(),
            vec![vec![0], vec![0], vec![1, 2, 3], vec![1], vec![2], vec![3]]
        );
        h.close().await.unwrap();
    }
}
