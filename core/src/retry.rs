//! One retry policy for every loop that waits on something outside the process.
//!
//! A loop picks the [`RetryPolicy`] for what it waits on (a database or broker to reconnect to,
//! a delivery to a topic, sink or webhook, a full local queue) and asks its [`Backoff`] what to
//! do after each failure: [`Backoff::after`] reads the error's [`RetryHint`], so a permanent
//! error (a record that will never decode, a config the user must fix) is given up at once
//! instead of being retried forever. Delays double from `initial` to `max`, with up to 20%
//! jitter so that many clients that lost the same server do not come back in lockstep.
//! [`retry`] is the whole loop, shutdown-aware, for the common case.

use crate::error::{Error, RetryHint};
use crate::shutdown::Shutdown;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// How a kind of retry backs off. The presets are the only bounds used in the code base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Reconnecting to a database: the first retry is quick (a restart or a failover takes a
    /// second or two), then every 5 s at most: a dead server costs a dozen attempts a minute,
    /// not a hot loop, and a heartbeat writer is back within 5 s of its primary.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    /// Delivering to Kafka, a sink or a webhook: capped at 5 s so that a sink coming back is
    /// used again within seconds (consumption is paused meanwhile).
    pub const DELIVERY: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    /// Waiting for room in a full local queue (nothing failed; the broker is slow or away).
    pub const QUEUE_FULL: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_secs(1),
    };

    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            next: self.initial,
        }
    }
}

/// The state of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    /// The next delay: doubles up to the policy's `max`, with up to 20% jitter.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        let jitter = rand::thread_rng().gen_range(0.0..0.2);
        base.mul_f64(1.0 + jitter).min(self.policy.max)
    }

    /// After a failure with `hint`: how long to wait before the next attempt, or None when
    /// another attempt cannot help.
    pub fn after(&mut self, hint: RetryHint) -> Option<Duration> {
        match hint {
            RetryHint::Retry => Some(self.next_delay()),
            RetryHint::NoRetry => None,
        }
    }

    /// Success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

/// What an error says about retrying.
pub trait Retryable: std::fmt::Display {
    fn retry_hint(&self) -> RetryHint;
}

impl Retryable for Error {
    fn retry_hint(&self) -> RetryHint {
        Error::retry_hint(self)
    }
}

/// Why [`retry`] stopped without a result.
#[derive(Debug)]
pub enum Stopped<E> {
    /// The error is permanent (its hint says so).
    Permanent(E),
    /// Shutdown came first.
    Shutdown,
}

/// Run `op` until it succeeds, backing off by `policy` between attempts and logging each
/// failure as `what`. Returns early on a permanent error or on shutdown.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    shutdown: &Shutdown,
    mut op: F,
) -> Result<T, Stopped<E>>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = policy.backoff();
    let mut stop = shutdown.clone();
    loop {
        if shutdown.is_triggered() {
            return Err(Stopped::Shutdown);
        }
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(delay) = backoff.after(e.retry_hint()) else {
            tracing::warn!(error = %e, "{what} failed permanently.");
            return Err(Stopped::Permanent(e));
        };
        tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait() => return Err(Stopped::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let p = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let mut b = p.backoff();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(10) && first < Duration::from_millis(13));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_millis(100));
        }
        assert!(b.next_delay() >= Duration::from_millis(100));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(13));
    }

    #[test]
    fn a_permanent_error_is_not_retried() {
        let mut b = RetryPolicy::DELIVERY.backoff();
        assert_eq!(b.after(RetryHint::NoRetry), None);
        assert!(b.after(RetryHint::Retry).is_some());
    }

    #[derive(Debug)]
    struct Flaky(RetryHint);
    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky ({:?})", self.0)
        }
    }
    impl Retryable for Flaky {
        fn retry_hint(&self) -> RetryHint {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_loops_until_success_and_gives_up_on_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, Stopped<Flaky>> = retry(
            RetryPolicy::DELIVERY,
            "test",
            &Shutdown::never(),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Flaky(RetryHint::Retry)),
                    n => Ok(n),
                }
            },
        )
        .await;
        assert_eq!(r.ok(), Some(2));
        let r: Result<(), Stopped<Flaky>> = retry(
            RetryPolicy::DELIVERY,
            "test",
            &Shutdown::never(),
            || async { Err(Flaky(RetryHint::NoRetry)) },
        )
        .await;
        assert!(matches!(r, Err(Stopped::Permanent(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_shutdown() {
        let (trigger, token) = crate::shutdown::shutdown_pair();
        trigger.trigger();
        let r: Result<(), Stopped<Flaky>> =
            retry(RetryPolicy::RECONNECT, "test", &token, || async {
                Err(Flaky(RetryHint::Retry))
            })
            .await;
        assert!(matches!(r, Err(Stopped::Shutdown)));
    }
}
