//! `[processor]`: the window lengths and when windows close.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Tumbling window lengths; each is computed for every replica.
    #[serde(default = "default_windows")]
    pub windows: Vec<HumanDuration>,
    /// How long after a window's end records for it are still accepted (event time).
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: HumanDuration,
    /// A replica with no record for this long (wall clock: its writer or every reader is
    /// down) has its windows closed that long after their end, empty ones included, with the
    /// heartbeats the writer's interval says should exist counted as missing. A lagging
    /// replica is not silent (the reader reports its lag every 250 ms). Default:
    /// allowed_lateness + 5 s, so a reader restart does not count as silence. Must exceed
    /// allowed_lateness + 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_close: Option<HumanDuration>,
    /// A record whose commit time is more than this ahead of the processor's clock, or whose
    /// observation time (primary clock) is this far from when the reader published it (its
    /// Kafka timestamp, the reader's clock), comes from a primary whose clock is wrong: it goes
    /// to dead-letter with the reason and never moves a watermark.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
    /// Records with a commit time older than this (the replica-delay topic's retention) go to
    /// dead-letter.
    #[serde(default = "default_max_event_age")]
    pub max_event_age: HumanDuration,
    /// Built-in rules on silence.
    #[serde(default)]
    pub stale: StaleConfig,
    /// Kafka consumer group.
    #[serde(default = "default_processor_group")]
    pub group: String,
    /// Address of /metrics, /healthz, /readyz: `host:port`, `:port` (every interface) or a
    /// host name (resolved at start). Default 127.0.0.1:8463.
    #[serde(
        default = "default_processor_listen",
        deserialize_with = "super::listen::deserialize"
    )]
    pub listen: SocketAddr,
    /// Closed windows waiting for sinks before consumption pauses (bounded memory).
    #[serde(default = "default_max_pending_windows")]
    pub max_pending_windows: usize,
    /// Threads of the `processor` service's runtime; the default, 1, is a single-threaded
    /// runtime (see `reader.worker_threads`): 1,000 replicas at 10 ms are 100k records/s, about
    /// 0.15 of a core end to end (`processor_e2e`). `millilag all` keeps its multi-threaded
    /// runtime.
    #[serde(default = "default_processor_worker_threads")]
    pub worker_threads: usize,
}

/// Shortest window; every window is also a whole number of milliseconds.
const MIN_WINDOW: Duration = Duration::from_millis(100);
/// What the default `idle_close` adds to allowed_lateness: longer than a reader restart.
const IDLE_CLOSE_SLACK: Duration = Duration::from_secs(5);
/// What `idle_close` must exceed beyond allowed_lateness: a lagging replica's reports are
/// 250 ms apart.
const IDLE_CLOSE_MIN_SLACK: Duration = Duration::from_secs(1);

/// `[processor.stale]`: alerts on silence, through the same alert topics and webhooks as the
/// `[[alert]]` rules. "0s" turns a rule off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleConfig {
    /// `heartbeats-stale` fires for a cluster when no heartbeat was announced for this long
    /// (its writer or primary is down).
    #[serde(default = "default_stale_after")]
    pub heartbeats_after: HumanDuration,
    /// `measurements-stale` fires for a replica when heartbeats are announced but no
    /// replica-delay record came for it for this long (every reader group is down).
    #[serde(default = "default_stale_after")]
    pub measurements_after: HumanDuration,
    #[serde(default = "default_stale_severity")]
    pub severity: String,
}

impl Default for StaleConfig {
    fn default() -> Self {
        StaleConfig {
            heartbeats_after: default_stale_after(),
            measurements_after: default_stale_after(),
            severity: default_stale_severity(),
        }
    }
}

fn default_stale_after() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_stale_severity() -> String {
    "critical".into()
}
/// An NTP-synced host is within milliseconds; a stepped clock is off by minutes or hours.
fn default_max_clock_skew() -> HumanDuration {
    HumanDuration::from_secs(60)
}
/// The replica-delay topic's retention (7 days).
fn default_max_event_age() -> HumanDuration {
    HumanDuration::from_secs(7 * 24 * 3600)
}

fn default_windows() -> Vec<HumanDuration> {
    vec![
        HumanDuration::from_secs(1),
        HumanDuration::from_secs(10),
        HumanDuration::from_secs(60),
    ]
}
fn default_allowed_lateness() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_processor_group() -> String {
    "millilag-processor".into()
}
// Outside 9100-9999, where the Prometheus exporters' default ports are allocated (9101-9103:
// haproxy, statsd and collectd exporters).
fn default_processor_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8463))
}
const fn default_max_pending_windows() -> usize {
    100_000
}
const fn default_processor_worker_threads() -> usize {
    1
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            windows: default_windows(),
            allowed_lateness: default_allowed_lateness(),
            idle_close: None,
            max_clock_skew: default_max_clock_skew(),
            max_event_age: default_max_event_age(),
            stale: StaleConfig::default(),
            group: default_processor_group(),
            listen: default_processor_listen(),
            max_pending_windows: default_max_pending_windows(),
            worker_threads: default_processor_worker_threads(),
        }
    }
}

impl ProcessorConfig {
    /// `idle_close` or its default: the lateness plus 5 s of slack.
    pub fn idle_close_or_default(&self) -> Duration {
        self.idle_close
            .map(|d| d.0)
            .unwrap_or(self.allowed_lateness.0 + IDLE_CLOSE_SLACK)
    }

    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if self.windows.is_empty() {
            p.push("processor.windows: empty; give at least one, e.g. [\"1s\"]".into());
        }
        for w in &self.windows {
            if w.0 < MIN_WINDOW || w.0.as_micros() % 1000 != 0 {
                p.push(format!(
                    "processor.windows: {w} must be at least 100ms and a whole number of milliseconds"
                ));
            }
        }
        if let Some(idle) = self.idle_close {
            if idle.0 <= self.allowed_lateness.0 + IDLE_CLOSE_MIN_SLACK {
                p.push(format!(
                    "processor.idle_close ({idle}) must be greater than processor.allowed_lateness ({}) + 1s",
                    self.allowed_lateness
                ));
            }
        }
        super::reader::check_worker_threads("processor", self.worker_threads, p);
        if self.max_clock_skew.0.is_zero() {
            p.push("processor.max_clock_skew: must be more than 0, e.g. \"1m\"".into());
        }
        if self.max_event_age.0 <= self.max_clock_skew.0 {
            p.push(format!(
                "processor.max_event_age ({}) must be greater than processor.max_clock_skew ({})",
                self.max_event_age, self.max_clock_skew
            ));
        }
    }
}
