//! Exponential backoff with jitter for reconnects and retries.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The next delay: doubles up to `max`, with up to 20% jitter so that many clients that
    /// lost the same server do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.0..0.2);
        base.mul_f64(1.0 + jitter).min(self.max)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(10) && first < Duration::from_millis(13));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_millis(100));
        }
        assert!(b.next_delay() >= Duration::from_millis(100));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(13));
    }
}
