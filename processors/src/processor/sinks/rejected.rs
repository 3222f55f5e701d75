//! Windows a sink refused for good (an InfluxDB 400/401/403/404/413/422: see
//! [`Error::retry_hint`](millilag_core::Error::retry_hint)) are handed on to the `dead-letter`
//! topic instead of being retried forever, so one bad batch or a rotated token does not pause
//! the processor and its alerting.
//!
//! One dead letter per window: key `cluster/replica`, payload the window as a `delay-window`
//! record (single-object encoding, so a tool can decode and re-send it), `topic` the
//! delay-window topic, partition and offset -1 (the window was made here, not read), reason
//! `sink <name> rejected the point: <error with HTTP status and body>`. The sink task
//! acknowledges the batch only after Kafka acknowledged every dead letter, so a refused window
//! still moves offsets only once it is durably somewhere.
//!
//! [`RejectionLog`] keeps the log to one line per cause, repeated at most every
//! [`REPEAT_LOG_EVERY`] with how many refusals it stood for.

use crate::consumer::{lasting_refusal, REFUSALS_BEFORE_DROPPING};
use millilag_core::events::{DelayWindow, Record};
use millilag_core::kafka::{self, topics};
use millilag_core::metrics::Labels;
use millilag_core::retry::{retry, RetryPolicy, Retryable, Stopped};
use millilag_core::shutdown::Shutdown;
use millilag_core::RetryHint;
use millilag_core::{Config, Error};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::producer::FutureProducer;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How often a cause that keeps coming is logged again.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(600);
/// Causes remembered at once; beyond, the memory starts afresh (a cause is then logged again).
const MAX_CAUSES: usize = 64;

/// Where refused windows go. Returns once they are durably there.
pub trait Rejections: Send + 'static {
    fn hand_on<'a>(
        &'a mut self,
        windows: &'a [&'a DelayWindow],
        why: &'a Error,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// The label of a refusal on `millilag_processor_sink_rejected_total`: its HTTP status, or the
/// error's domain when it has none (a window that does not encode: "internal").
pub fn status_label(e: &Error) -> String {
    match e {
        Error::HttpStatus { status, .. } => status.to_string(),
        other => other.domain().to_string(),
    }
}

/// The `dead-letter` topic as the destination of refused windows.
pub struct DeadLetterTopic {
    producer: FutureProducer,
    /// For the dead-letter topic's name.
    config: Config,
    /// The topic named in each dead letter: what its payload is.
    window_topic: String,
    sink: String,
    /// `dead_letter_dropped_total{reason}`: windows given up with their dead letter.
    dropped: Family<Labels, Counter>,
}

impl DeadLetterTopic {
    pub fn new(
        producer: FutureProducer,
        config: &Config,
        sink: &str,
        dropped: Family<Labels, Counter>,
    ) -> DeadLetterTopic {
        DeadLetterTopic {
            producer,
            config: config.clone(),
            window_topic: config.topic(topics::DELAY_WINDOW),
            sink: sink.to_string(),
            dropped,
        }
    }
}

impl Rejections for DeadLetterTopic {
    async fn hand_on<'a>(&'a mut self, windows: &'a [&'a DelayWindow], why: &'a Error) {
        let reason = format!("sink {} rejected the point: {why}", self.sink);
        let letters: Vec<(String, Option<Vec<u8>>)> = windows
            .iter()
            .map(|w| (format!("{}/{}", w.cluster, w.replica), w.encode().ok()))
            .collect();
        // No shutdown token: the run loop aborts this task after its drain deadline, and a
        // window whose dead letter was not acknowledged is replayed after the restart.
        // Shared with each attempt's future (an FnMut cannot lend out a &mut).
        let refusals = std::sync::atomic::AtomicU32::new(0);
        let sent = retry(
            RetryPolicy::DELIVERY,
            "Dead-letter write",
            &Shutdown::never(),
            || {
                let attempt =
                    futures::future::try_join_all(letters.iter().map(|(key, payload)| {
                        kafka::dead_letter(
                            &self.producer,
                            &self.config,
                            "processor",
                            &self.window_topic,
                            -1,
                            -1,
                            Some(key.as_bytes()),
                            payload.as_deref(),
                            &reason,
                        )
                    }));
                let refusals = &refusals;
                async move {
                    attempt.await.map_err(|e| {
                        // A topic that is missing or forbidden does not come back by waiting:
                        // retrying it forever would hold this sink, and so every offset.
                        match lasting_refusal_of(&e) {
                            Some(label) => {
                                let n = refusals.fetch_add(1, Ordering::Relaxed) + 1;
                                if n >= REFUSALS_BEFORE_DROPPING {
                                    return Refused::ForGood(label, e);
                                }
                                Refused::Retry(e)
                            }
                            None => Refused::Retry(e),
                        }
                    })
                }
            },
        )
        .await;
        match sent {
            Ok(_) | Err(Stopped::Shutdown) => {}
            Err(Stopped::Permanent(Refused::ForGood(label, e))) => {
                self.dropped
                    .get_or_create(&vec![("reason", label.to_string())])
                    .inc_by(windows.len() as u64);
                tracing::error!(error = %e, windows = windows.len(), sink = %self.sink, dead_letter_topic = %self.config.topic(topics::DEAD_LETTER), "Refused windows could not be dead-lettered either (topic missing or not allowed); dropped.");
            }
            Err(Stopped::Permanent(Refused::Retry(e))) => {
                // Only a dead letter that does not encode gets here: a bug, not the broker.
                tracing::error!(error = %e, windows = windows.len(), "Refused windows could not be dead-lettered; dropped.");
            }
        }
    }
}

/// A failed dead-letter write, for the retry loop.
#[derive(Debug)]
enum Refused {
    /// Retried as the error's own hint says.
    Retry(Error),
    /// Refused [`REFUSALS_BEFORE_DROPPING`] times for a reason waiting does not fix.
    ForGood(&'static str, Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Retry(e) | Refused::ForGood(_, e) => e.fmt(f),
        }
    }
}

impl Retryable for Refused {
    fn retry_hint(&self) -> RetryHint {
        match self {
            Refused::Retry(e) => e.retry_hint(),
            Refused::ForGood(..) => RetryHint::NoRetry,
        }
    }
}

fn lasting_refusal_of(e: &Error) -> Option<&'static str> {
    match e {
        Error::Kafka(k) => lasting_refusal(k),
        _ => None,
    }
}

/// One log line per cause of refusal, not one per batch.
#[derive(Debug, Default)]
pub struct RejectionLog {
    causes: HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    logged_at: Instant,
    /// Windows refused for this cause since it was last logged.
    since: u64,
}

impl RejectionLog {
    /// `windows` were refused with `why` at `now`. Returns Some(windows refused for this cause
    /// since it was last logged, these included) when it is time to log it.
    pub fn note(&mut self, why: &Error, windows: u64, now: Instant) -> Option<u64> {
        let cause = cause(why);
        if let Some(seen) = self.causes.get_mut(&cause) {
            seen.since += windows;
            if now.duration_since(seen.logged_at) < REPEAT_LOG_EVERY {
                return None;
            }
            let n = seen.since;
            *seen = Seen {
                logged_at: now,
                since: 0,
            };
            return Some(n);
        }
        if self.causes.len() >= MAX_CAUSES {
            self.causes.clear();
        }
        self.causes.insert(
            cause,
            Seen {
                logged_at: now,
                since: 0,
            },
        );
        Some(windows)
    }
}

/// An error's text with its numbers blanked: InfluxDB's "partial write: points beyond retention
/// policy dropped=3" and "...dropped=7" are one cause.
fn cause(why: &Error) -> String {
    why.to_string()
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_logged_once_then_every_ten_minutes_with_its_count() {
        let mut log = RejectionLog::default();
        let t0 = Instant::now();
        let beyond = |n: u32| {
            Error::http_status(
                "POST /write",
                400,
                &format!("partial write: points beyond retention policy dropped={n}"),
            )
        };
        assert_eq!(log.note(&beyond(3), 3, t0), Some(3));
        assert_eq!(log.note(&beyond(7), 7, t0 + Duration::from_secs(1)), None);
        let not_found = Error::http_status("POST /write", 404, "database not found");
        assert_eq!(
            log.note(&not_found, 1, t0 + Duration::from_secs(2)),
            Some(1),
            "another cause is logged at once"
        );
        assert_eq!(log.note(&beyond(1), 1, t0 + REPEAT_LOG_EVERY), Some(8));
        assert_eq!(log.note(&beyond(1), 1, t0 + REPEAT_LOG_EVERY), None);
    }

    #[test]
    fn the_status_label_is_the_http_status() {
        assert_eq!(status_label(&Error::http_status("x", 413, "")), "413");
        assert_eq!(
            status_label(&Error::Encode {
                record: "delay-window",
                message: "m".into()
            }),
            "internal"
        );
    }
}
