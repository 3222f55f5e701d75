//! `[writer]`: the heartbeat schedule and what the writer does around it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// Heartbeat interval (1ms..60s). pt-heartbeat's default is 1s; millipede's was 10ms.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// CREATE TABLE IF NOT EXISTS the heartbeat table (needs CREATE once).
    #[serde(default = "super::default_true")]
    pub create_table: bool,
    /// Address of /metrics, /healthz, /readyz: `host:port`, `:port` (every interface) or a
    /// host name (resolved at start). Default 127.0.0.1:8461.
    #[serde(
        default = "default_writer_listen",
        deserialize_with = "super::listen::deserialize"
    )]
    pub listen: SocketAddr,
    /// This instance's id in events and in the row's writer_id (default: hostname-pid, cut to
    /// 64 characters). At most 64 characters: the column's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_id: Option<String>,
    /// GTID domain for the heartbeat session (MariaDB; needs BINLOG REPLAY or SUPER), so
    /// heartbeat GTIDs are consecutive and readers can wait for the next one before it exists.
    /// 0 keeps the server's domain.
    #[serde(default = "default_gtid_domain")]
    pub gtid_domain_id: u32,
    /// Heartbeats that may wait for Kafka; beyond it new ones are dropped and counted, so a
    /// broker outage never delays the heartbeat schedule.
    #[serde(default = "default_publish_queue")]
    pub publish_queue: usize,
}

/// The heartbeat table's `writer_id varchar(64)`.
pub const MAX_WRITER_ID: usize = 64;

/// The accepted range of `interval`.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

// millipede's interval.
fn default_interval() -> HumanDuration {
    HumanDuration::from_millis(10)
}
// Outside 9100-9999, where the Prometheus exporters' default ports are allocated (9101-9103:
// haproxy, statsd and collectd exporters).
fn default_writer_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8461))
}
const fn default_gtid_domain() -> u32 {
    77
}
const fn default_publish_queue() -> usize {
    10_000
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: default_interval(),
            create_table: true,
            listen: default_writer_listen(),
            writer_id: None,
            gtid_domain_id: default_gtid_domain(),
            publish_queue: default_publish_queue(),
        }
    }
}

impl WriterConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval.0) {
            p.push(format!(
                "writer.interval ({}) must be between 1ms and 60s",
                self.interval
            ));
        }
        if let Some(id) = &self.writer_id {
            let n = id.chars().count();
            if n == 0 || n > MAX_WRITER_ID {
                p.push(format!(
                    "writer.writer_id ({n} characters) must be 1 to {MAX_WRITER_ID} characters (the heartbeat table's writer_id column); shorten it or remove it for hostname-pid"
                ));
            }
        }
        if self.publish_queue == 0 {
            p.push("writer.publish_queue must be at least 1".into());
        }
    }
}
