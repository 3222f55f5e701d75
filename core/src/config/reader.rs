//! `[reader]`: how replicas are watched for heartbeats, and the limits on it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// How the reader learns that a replica shows a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReaderMethod {
    /// MASTER_GTID_WAIT (MariaDB) / WAIT_FOR_EXECUTED_GTID_SET (MySQL): one query, no polling.
    GtidWait,
    /// Poll the heartbeat row's seq every `poll_interval`.
    Poll,
    /// gtid-wait where the replica and the event support it, else poll.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// gtid-wait | poll | auto.
    #[serde(default = "default_method")]
    pub method: ReaderMethod,
    /// Poll gap in poll mode; while a heartbeat is overdue the gap is 2% of how late it is,
    /// between this and `poll_max_interval`.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Longest poll gap.
    #[serde(default = "default_poll_max_interval")]
    pub poll_max_interval: HumanDuration,
    /// Give up on a heartbeat after this long (status timeout).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Kafka consumer group.
    #[serde(default = "default_reader_group")]
    pub group: String,
    /// Address of /metrics, /healthz, /readyz: `host:port`, `:port` (every interface) or a
    /// host name (resolved at start). Default 127.0.0.1:8462.
    #[serde(
        default = "default_reader_listen",
        deserialize_with = "super::listen::deserialize"
    )]
    pub listen: SocketAddr,
    /// This instance's id in records (default: hostname-pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_id: Option<String>,
    /// GTID waits kept armed ahead per replica (each holds one replica connection, beside the
    /// control one), so that visibility is timed before the Kafka event arrives. The default, 1,
    /// arms heartbeat n + 1 the moment the replica reaches n (2 sessions per replica); a reader
    /// descheduled for longer than one interval then reports some heartbeats as upper bounds.
    /// 2 keeps one more interval of slack for a busy reader, at 3 sessions per replica.
    #[serde(default = "default_prearm_depth")]
    pub prearm_depth: usize,
    /// How often the clock offset to each primary is re-estimated.
    #[serde(default = "default_clock_refresh")]
    pub clock_refresh: HumanDuration,
    /// How often discovered replicas are refreshed.
    #[serde(default = "default_discovery_interval")]
    pub discovery_interval: HumanDuration,
    /// librdkafka fetch.wait.max.ms for the heartbeat consumer. Visibility is timed by the
    /// replicas (armed GTID waits, anticipating polls), not by when the event arrives, so this
    /// only delays the join with the commit time. Real Kafka answers a waiting fetch as soon as
    /// a record arrives; Tansu 0.6 only when this expires, and each answer costs it CPU.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait: HumanDuration,
    /// Heartbeats measured at once per replica; more are superseded (status skipped).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_replica: usize,
    /// replica-delay records waiting for Kafka's acknowledgement at most (bounded memory while
    /// the broker is slow or away). Above half of it heartbeat-set consumption pauses, and
    /// resumes at a quarter; nothing is lost, the heartbeats wait on Kafka.
    #[serde(default = "default_max_pending_records")]
    pub max_pending_records: usize,
    /// Threads of the `reader` service's runtime. The default, 1, is a single-threaded
    /// runtime: every replica's work is short and waits on the network, and one thread spares
    /// the cross-thread wake-ups (15% less CPU per measurement at 100-200 replicas, measured
    /// with `reader_scale`). More only if one core cannot keep up. `millilag all` keeps its
    /// multi-threaded runtime.
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
}

/// Shortest `timeout`.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Shortest `clock_refresh` and `discovery_interval`: each round opens a connection.
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// Most `prearm_depth`: each armed wait holds a replica connection.
const MAX_PREARM_DEPTH: usize = 256;

const fn default_method() -> ReaderMethod {
    ReaderMethod::Auto
}
fn default_poll_interval() -> HumanDuration {
    HumanDuration::from_millis(1)
}
fn default_poll_max_interval() -> HumanDuration {
    HumanDuration::from_millis(20)
}
fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_reader_group() -> String {
    "millilag-reader".into()
}
// Outside 9100-9999, where the Prometheus exporters' default ports are allocated (9101-9103:
// haproxy, statsd and collectd exporters).
fn default_reader_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8462))
}
const fn default_prearm_depth() -> usize {
    1
}
fn default_clock_refresh() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_discovery_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
// librdkafka's fetch.wait.max.ms default is 500 ms; see the field for why this is lower.
fn default_fetch_wait() -> HumanDuration {
    HumanDuration::from_millis(50)
}
const fn default_max_in_flight() -> usize {
    4096
}
// About 10 MB of records and their copies in the producer; 100 s of 10 ms heartbeats on 10
// replicas.
const fn default_max_pending_records() -> usize {
    10_000
}
const fn default_worker_threads() -> usize {
    1
}
/// Most `worker_threads`.
const MAX_WORKER_THREADS: usize = 256;

/// `<section>.worker_threads`: a runtime needs one thread, and more than this is a typo.
pub(super) fn check_worker_threads(section: &str, n: usize, p: &mut Vec<String>) {
    if n == 0 || n > MAX_WORKER_THREADS {
        p.push(format!(
            "{section}.worker_threads ({n}) must be between 1 and {MAX_WORKER_THREADS}; e.g. 1"
        ));
    }
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            method: default_method(),
            poll_interval: default_poll_interval(),
            poll_max_interval: default_poll_max_interval(),
            timeout: default_timeout(),
            group: default_reader_group(),
            listen: default_reader_listen(),
            reader_id: None,
            prearm_depth: default_prearm_depth(),
            clock_refresh: default_clock_refresh(),
            discovery_interval: default_discovery_interval(),
            fetch_wait: default_fetch_wait(),
            max_in_flight_per_replica: default_max_in_flight(),
            max_pending_records: default_max_pending_records(),
            worker_threads: default_worker_threads(),
        }
    }
}

impl ReaderConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if self.poll_interval.0.is_zero() || self.poll_interval > self.poll_max_interval {
            p.push(format!(
                "reader.poll_interval ({}) must be > 0 and at most reader.poll_max_interval ({})",
                self.poll_interval, self.poll_max_interval
            ));
        }
        if self.timeout.0 < MIN_TIMEOUT {
            p.push(format!(
                "reader.timeout ({}) must be at least 10ms",
                self.timeout
            ));
        }
        // A zero period would re-sample the clock / re-list replicas in a busy loop.
        for (key, d, example) in [
            ("clock_refresh", self.clock_refresh, "10s"),
            ("discovery_interval", self.discovery_interval, "10s"),
        ] {
            if d.0 < MIN_PERIOD {
                p.push(format!(
                    "reader.{key} ({d}) must be at least 100ms; e.g. \"{example}\""
                ));
            }
        }
        if self.max_pending_records == 0 {
            p.push("reader.max_pending_records must be at least 1; e.g. 10000".to_string());
        }
        check_worker_threads("reader", self.worker_threads, p);
        if self.prearm_depth == 0 || self.prearm_depth > MAX_PREARM_DEPTH {
            p.push(format!(
                "reader.prearm_depth ({}) must be between 1 and {MAX_PREARM_DEPTH}",
                self.prearm_depth
            ));
        }
    }
}
