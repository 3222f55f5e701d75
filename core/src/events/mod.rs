//! The records millilag publishes, as Rust types, and their Avro codec.
//!
//! `schemas/*.avsc` is the contract; these types must match it field for field (checked by
//! `tests::rust_types_match_the_avsc_files`). Fields that were added after a schema's first
//! version carry `#[serde(default)]` equal to the `.avsc` default, so records written by an
//! older producer decode (see `schemas/history/`).

mod codec;

pub use codec::{Codec, DecodeError, Record};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A heartbeat the primary acknowledged, announced by the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatSet {
    pub cluster: String,
    pub primary: String,
    pub server_id: i64,
    pub writer_id: String,
    #[serde(default)]
    pub writer_epoch: i64,
    pub seq: i64,
    pub committed_at_us: i64,
    #[serde(default)]
    pub gtid: Option<String>,
    #[serde(default)]
    pub binlog_file: Option<String>,
    #[serde(default)]
    pub binlog_pos: Option<i64>,
    #[serde(default)]
    pub interval_us: i64,
    #[serde(default)]
    pub commit_rtt_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureMethod {
    GtidWait,
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasureStatus {
    Ok,
    Timeout,
    ReplicaUnreachable,
    ReplicationStopped,
    Skipped,
    /// Not a measurement: a live-lag sample (the heartbeat was not shown yet at observed_at).
    Pending,
}

impl MeasureStatus {
    pub const ALL: [MeasureStatus; 6] = [
        MeasureStatus::Ok,
        MeasureStatus::Timeout,
        MeasureStatus::ReplicaUnreachable,
        MeasureStatus::ReplicationStopped,
        MeasureStatus::Skipped,
        MeasureStatus::Pending,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MeasureStatus::Ok => "ok",
            MeasureStatus::Timeout => "timeout",
            MeasureStatus::ReplicaUnreachable => "replica_unreachable",
            MeasureStatus::ReplicationStopped => "replication_stopped",
            MeasureStatus::Skipped => "skipped",
            MeasureStatus::Pending => "pending",
        }
    }
}

impl MeasureMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            MeasureMethod::GtidWait => "gtid_wait",
            MeasureMethod::Poll => "poll",
        }
    }
}

/// How long one heartbeat took to become visible on one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDelay {
    pub cluster: String,
    pub replica: String,
    pub primary: String,
    pub seq: i64,
    #[serde(default)]
    pub committed_at_us: i64,
    pub delay_us: i64,
    pub uncertainty_us: i64,
    pub method: MeasureMethod,
    pub status: MeasureStatus,
    #[serde(default)]
    pub upper_bound: bool,
    pub observed_at_us: i64,
    pub reader_id: String,
    #[serde(default)]
    pub queries: i32,
}

impl ReplicaDelay {
    /// Event time for windowing: the heartbeat's commit time on the primary clock. Records from
    /// v1 readers lack it; their observation time minus the delay is the same instant.
    pub fn event_time_us(&self) -> i64 {
        if self.committed_at_us != 0 {
            self.committed_at_us
        } else {
            self.observed_at_us - self.delay_us
        }
    }

    /// Kafka key: all records of one replica land in one partition, in order.
    pub fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.replica)
    }
}

/// One closed tumbling window of one replica's delays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelayWindow {
    pub cluster: String,
    pub replica: String,
    pub window_start_us: i64,
    pub window_us: i64,
    pub count: i64,
    pub missing: i64,
    #[serde(default)]
    pub min_us: Option<i64>,
    #[serde(default)]
    pub p50_us: Option<i64>,
    #[serde(default)]
    pub p90_us: Option<i64>,
    #[serde(default)]
    pub p99_us: Option<i64>,
    #[serde(default)]
    pub max_us: Option<i64>,
    #[serde(default)]
    pub timeouts: i64,
    #[serde(default)]
    pub unreachable: i64,
    #[serde(default)]
    pub replication_stopped: i64,
    #[serde(default)]
    pub skipped: i64,
    #[serde(default)]
    pub upper_bounds: i64,
    #[serde(default)]
    pub duplicates: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    /// The name on the wire (the Avro enum symbol), also used as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert rule changed state for one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub cluster: String,
    pub replica: String,
    pub state: AlertState,
    pub severity: String,
    pub expression: String,
    pub value: f64,
    pub threshold: f64,
    pub since_us: i64,
    pub at_us: i64,
    pub fingerprint: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A record a service could not process, kept with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub key: Option<serde_bytes::ByteBuf>,
    #[serde(default)]
    pub payload: Option<serde_bytes::ByteBuf>,
    pub reason: String,
    pub service: String,
    pub failed_at_us: i64,
}

macro_rules! record {
    ($ty:ty, $name:literal, $file:literal, [$($old:literal),*]) => {
        impl Record for $ty {
            const NAME: &'static str = $name;
            const SCHEMA: &'static str = include_str!(concat!("../../../schemas/", $file));
            const HISTORY: &'static [&'static str] =
                &[$(include_str!(concat!("../../../schemas/history/", $old))),*];
            fn codec() -> &'static Codec {
                static CODEC: std::sync::OnceLock<Codec> = std::sync::OnceLock::new();
                CODEC.get_or_init(Codec::for_record::<$ty>)
            }
        }
    };
}

record!(
    HeartbeatSet,
    "heartbeat-set",
    "heartbeat_set.avsc",
    ["heartbeat_set.v1.avsc"]
);
record!(
    ReplicaDelay,
    "replica-delay",
    "replica_delay.avsc",
    ["replica_delay.v2.avsc", "replica_delay.v1.avsc"]
);
record!(DelayWindow, "delay-window", "delay_window.avsc", []);
record!(Alert, "alert", "alert.avsc", []);
record!(DeadLetter, "dead-letter", "dead_letter.avsc", []);

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
