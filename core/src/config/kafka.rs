//! `[kafka]`: the brokers, topic names and librdkafka properties every service shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (librdkafka `bootstrap.servers`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Prefix of every topic name: `<prefix>heartbeat-set`, `<prefix>replica-delay`, ...
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Create missing topics at start (admin API). Off where topics are managed elsewhere.
    #[serde(default = "super::default_true")]
    pub create_topics: bool,
    /// Partitions for topics millilag creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for topics millilag creates. -1 (the default) takes the broker's
    /// `default.replication.factor` (Kafka 2.4+, KIP-464); set it to pin one (3 in production).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Passed to librdkafka as-is (TLS, SASL, tuning). Keys containing "password", "secret" or
    /// "key" are masked when printed.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

// librdkafka's own default for bootstrap.servers is empty; a local broker is the useful one.
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_prefix() -> String {
    "millilag.".into()
}
const fn default_partitions() -> i32 {
    6
}
// -1: "the broker's default" in CreateTopics (KIP-464), as kafka-topics.sh does unless told.
const fn default_replication_factor() -> i32 {
    -1
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            topic_prefix: default_topic_prefix(),
            create_topics: true,
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers: empty; set it to host:port[,host:port]".into());
        }
        for (k, v) in &self.properties {
            if let Some(why) = reserved_property(k) {
                p.push(format!(
                    "kafka.properties.\"{k}\" ({v:?}): millilag sets it itself ({why}); remove it"
                ));
            }
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            p.push(format!(
                "kafka.replication_factor ({}) must be -1 (the broker's default) or at least 1",
                self.replication_factor
            ));
        }
        if self.partitions < 1 {
            p.push(format!(
                "kafka.partitions ({}) must be at least 1",
                self.partitions
            ));
        }
    }
}

/// librdkafka properties millilag sets because its delivery guarantees depend on them, and
/// why; a user's value would silently win (properties are applied last), so they are refused.
pub fn reserved_property(key: &str) -> Option<&'static str> {
    Some(match key.trim().to_ascii_lowercase().as_str() {
        "enable.auto.commit" | "enable.auto.offset.store" => {
            "at-least-once: offsets are stored only after what a record produced was acknowledged"
        }
        "enable.idempotence" | "acks" => {
            "the idempotent, acks=all producer is what makes a retried record land once"
        }
        "transactional.id" => "millilag does not use Kafka transactions",
        "group.id" => "each service has its own group: set reader.group or processor.group",
        "bootstrap.servers" | "metadata.broker.list" => "set kafka.brokers instead",
        "enable.partition.eof" => "the consume loops do not expect end-of-partition events",
        _ => return None,
    })
}

/// librdkafka properties that carry credentials.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key") || k.contains("token")
}
