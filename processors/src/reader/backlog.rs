//! How many `replica-delay` records wait for Kafka's acknowledgement, bounded.
//!
//! Each record takes a [`Slot`] before it is queued for the publisher and gives it back once
//! acknowledged (or given up on at shutdown), so records in the queue, in the producer and
//! waiting for a retry are at most `reader.max_pending_records` together: a replica task that
//! publishes beyond that waits. Well before that, above half of it, the backlog asks the
//! reader to pause `heartbeat-set` (no new heartbeats, so no new records); below a quarter it
//! asks to resume. The heartbeats not read meanwhile wait on Kafka, so nothing is lost.

use millilag_core::shutdown::Shutdown;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::sync::{watch, Notify, Semaphore};

/// Unacknowledged records, the room left, and whether the input should pause.
pub(super) struct Backlog {
    room: Semaphore,
    max: usize,
    /// Records taken and not given back (the `publish_queue` metric).
    gauge: Gauge,
    pause: watch::Sender<bool>,
    /// Told when the last slot comes back.
    empty: Notify,
}

/// A record's place in the [`Backlog`], given back when dropped.
pub(super) struct Slot(Arc<Backlog>);

impl Backlog {
    pub fn new(max: usize, gauge: Gauge) -> (Arc<Backlog>, watch::Receiver<bool>) {
        let max = max.max(1);
        let (pause, paused) = watch::channel(false);
        let backlog = Backlog {
            room: Semaphore::new(max),
            max,
            gauge,
            pause,
            empty: Notify::new(),
        };
        (Arc::new(backlog), paused)
    }

    /// A slot for one more record: waits while `max` are unacknowledged; None on shutdown.
    pub async fn take(self: &Arc<Self>, shutdown: &Shutdown) -> Option<Slot> {
        // Given back by hand in Slot::drop, after which the count is read again. Room is the
        // rule (every record takes a slot): no shutdown listener unless it has to wait.
        match self.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                let mut stop = shutdown.clone();
                tokio::select! {
                    biased;
                    permit = self.room.acquire() => permit.ok()?.forget(),
                    _ = stop.wait() => return None,
                }
            }
        }
        self.changed();
        Some(Slot(self.clone()))
    }

    /// Records taken and not given back.
    pub fn len(&self) -> usize {
        self.max - self.room.available_permits()
    }

    /// Once no slot is taken: every record published has been acknowledged or given up.
    pub async fn drained(&self) {
        loop {
            let empty = self.empty.notified();
            if self.len() == 0 {
                return;
            }
            empty.await;
        }
    }

    /// Tell the reader to pause or resume if the count crossed a threshold. Decided inside the
    /// watch's lock, so concurrent takes and returns leave it as the last count says.
    fn changed(&self) {
        self.pause.send_if_modified(|paused| {
            let len = self.len();
            self.gauge.set(len as i64);
            let want = pause_wanted(*paused, len, self.max);
            std::mem::replace(paused, want) != want
        });
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.room.add_permits(1);
        self.0.changed();
        if self.0.len() == 0 {
            self.0.empty.notify_waiters();
        }
    }
}

/// Pause above half of `max`, resume at a quarter: far enough apart not to flap, and early
/// enough that the heartbeats already handed to replica tasks fit in what is left.
fn pause_wanted(paused: bool, len: usize, max: usize) -> bool {
    if paused {
        len > max / 4
    } else {
        len > max / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_half_and_resumes_at_a_quarter() {
        assert!(!pause_wanted(false, 50, 100), "at half");
        assert!(pause_wanted(false, 51, 100));
        assert!(pause_wanted(true, 26, 100), "still above a quarter");
        assert!(!pause_wanted(true, 25, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn takes_wait_at_the_limit_and_the_pause_follows_the_count() {
        let gauge = Gauge::default();
        let (backlog, mut paused) = Backlog::new(4, gauge.clone());
        let never = Shutdown::never();
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(backlog.take(&never).await.expect("room"));
        }
        assert_eq!(gauge.get(), 3);
        assert!(*paused.borrow_and_update(), "3 of 4 is above half");
        slots.push(backlog.take(&never).await.expect("room"));
        // Full: the fifth waits until a slot comes back.
        let fifth = backlog.take(&never);
        tokio::pin!(fifth);
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(1), &mut fifth)
                .await
                .is_err(),
            "no room at the limit"
        );
        slots.pop();
        slots.push(fifth.await.expect("room after a return"));
        assert_eq!(backlog.len(), 4);
        slots.truncate(1);
        assert_eq!(gauge.get(), 1);
        paused.changed().await.expect("resume announced");
        assert!(!*paused.borrow(), "1 of 4 is a quarter");
    }

    #[tokio::test]
    async fn a_take_waiting_for_room_gives_up_on_shutdown() {
        let (backlog, _paused) = Backlog::new(1, Gauge::default());
        let _held = backlog.take(&Shutdown::never()).await;
        let (trigger, shutdown) = millilag_core::shutdown::shutdown_pair();
        trigger.trigger();
        assert!(backlog.take(&shutdown).await.is_none());
    }
}
