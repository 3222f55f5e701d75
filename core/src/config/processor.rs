//! `[processor]`: the window lengths and when windows close.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ReaderConfig;
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
    /// A window with no newer record to close it is closed this long after its end, by the
    /// wall clock (a replica that went silent). Must exceed reader.timeout + allowed_lateness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_close: Option<HumanDuration>,
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
}

/// Shortest window; every window is also a whole number of milliseconds.
const MIN_WINDOW: Duration = Duration::from_millis(100);
/// What the default `idle_close` adds to reader.timeout + allowed_lateness.
const IDLE_CLOSE_SLACK: Duration = Duration::from_secs(5);

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

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            windows: default_windows(),
            allowed_lateness: default_allowed_lateness(),
            idle_close: None,
            group: default_processor_group(),
            listen: default_processor_listen(),
            max_pending_windows: default_max_pending_windows(),
        }
    }
}

impl ProcessorConfig {
    /// `idle_close` or its default: the reader's timeout plus the lateness plus 5 s of slack.
    pub fn idle_close_or_default(&self, reader: &ReaderConfig) -> Duration {
        self.idle_close
            .map(|d| d.0)
            .unwrap_or(reader.timeout.0 + self.allowed_lateness.0 + IDLE_CLOSE_SLACK)
    }

    /// `idle_close` depends on the reader's timeout, so the reader's part comes in too.
    pub(super) fn validate(&self, reader: &ReaderConfig, p: &mut Vec<String>) {
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
            if idle.0 <= reader.timeout.0 + self.allowed_lateness.0 {
                p.push(format!(
                    "processor.idle_close ({idle}) must be greater than reader.timeout ({}) + processor.allowed_lateness ({})",
                    reader.timeout, self.allowed_lateness
                ));
            }
        }
    }
}
