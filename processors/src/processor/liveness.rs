//! Whether silence means anything: a replica (or a whole cluster) is silent only when this
//! processor could have heard from it.
//!
//! While the broker is unreachable, or consumption is paused (the sinks are behind), no record
//! arrives from anyone: that is not a dead writer or dead readers, and closing windows then would
//! close them before their records, still on Kafka, are read. So silence counts only once the
//! input has been live (broker answering, not paused) for the whole `idle_close`: after an
//! outage, the backlog is read first. The broker is known to answer when a record arrives, or
//! when a metadata request (every second, in the background) does.

use crate::consumer::KafkaConsumer;
use millilag_core::clock::now_us;
use millilag_core::shutdown::Shutdown;
use rdkafka::consumer::Consumer;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the broker is asked when nothing else shows it answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// An answer older than this: the broker counts as unreachable.
const ANSWER_FRESH_US: i64 = 2_500_000;

#[derive(Debug)]
pub struct Liveness {
    /// When the broker last answered (processor clock).
    answered_at: Arc<AtomicI64>,
    /// Since when the input is live without interruption.
    live_since: Option<i64>,
}

impl Liveness {
    /// Start probing `topic`'s metadata through `consumer` until shutdown.
    pub fn spawn(consumer: Arc<KafkaConsumer>, topic: String, mut shutdown: Shutdown) -> Liveness {
        let answered_at = Arc::new(AtomicI64::new(now_us()));
        let at = answered_at.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                    _ = shutdown.wait() => return,
                }
                let (c, t) = (consumer.clone(), topic.clone());
                let ok = tokio::task::spawn_blocking(move || {
                    c.fetch_metadata(Some(&t), PROBE_EVERY).is_ok()
                })
                .await
                .unwrap_or(false);
                if ok {
                    at.fetch_max(now_us(), Ordering::Relaxed);
                }
            }
        });
        Liveness {
            answered_at,
            live_since: None,
        }
    }

    /// A record arrived: the broker answers.
    pub fn heard(&self, now: i64) {
        self.answered_at.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether silence of `silence_us` can be told at `now` (`paused`: consumption is paused).
    pub fn can_tell(&mut self, now: i64, paused: bool, silence_us: i64) -> bool {
        self.can_tell_given(
            now,
            self.answered_at.load(Ordering::Relaxed),
            paused,
            silence_us,
        )
    }

    fn can_tell_given(
        &mut self,
        now: i64,
        answered_at: i64,
        paused: bool,
        silence_us: i64,
    ) -> bool {
        let live = !paused && now - answered_at <= ANSWER_FRESH_US;
        if !live {
            self.live_since = None;
            return false;
        }
        let since = *self.live_since.get_or_insert(now);
        now - since >= silence_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn liveness() -> Liveness {
        Liveness {
            answered_at: Arc::new(AtomicI64::new(0)),
            live_since: None,
        }
    }

    #[test]
    fn silence_counts_only_after_a_whole_idle_period_of_live_input() {
        let mut l = liveness();
        assert!(!l.can_tell_given(0, 0, false, 5 * S), "live from now on");
        assert!(!l.can_tell_given(4 * S, 4 * S, false, 5 * S));
        assert!(l.can_tell_given(5 * S, 5 * S, false, 5 * S));
        // The broker stops answering: nothing can be told, and after it is back the backlog
        // gets a whole idle period first.
        assert!(!l.can_tell_given(9 * S, 6 * S, false, 5 * S));
        assert!(!l.can_tell_given(10 * S, 10 * S, false, 5 * S));
        assert!(!l.can_tell_given(14 * S, 14 * S, false, 5 * S));
        assert!(l.can_tell_given(15 * S, 15 * S, false, 5 * S));
        // Paused for the sinks: the same.
        assert!(!l.can_tell_given(16 * S, 16 * S, true, 5 * S));
        assert!(!l.can_tell_given(17 * S, 17 * S, false, 5 * S));
    }
}
