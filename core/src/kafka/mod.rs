//! Kafka clients configured the way every millilag service needs them.
//!
//! Delivery is at-least-once everywhere: producers are idempotent with acks=all; consumers never
//! auto-store offsets, a service stores a record's offset only once what it produced was acked,
//! and librdkafka commits stored offsets in the background and once more, synchronously, on
//! shutdown. Sinks are idempotent, so a replay after a crash overwrites instead of duplicating.

use crate::config::{Config, KafkaConfig};
use crate::error::{Error, Result};
use crate::events::{DeadLetter, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

pub mod check;

/// Topic suffixes (after `kafka.topic_prefix`).
pub mod topics {
    pub const HEARTBEAT_SET: &str = "heartbeat-set";
    pub const REPLICA_DELAY: &str = "replica-delay";
    pub const DELAY_WINDOW: &str = "delay-window";
    pub const ALERT: &str = "alert";
    pub const ALERT_STATE: &str = "alert-state";
    pub const PROCESSOR_STATE: &str = "processor-state";
    pub const DEAD_LETTER: &str = "dead-letter";
}

/// Topic settings per DESIGN §4: short retention for heartbeats (only live readers need them),
/// days for measurements (replayable), compaction for state.
pub fn topic_configs(suffix: &str) -> &'static [(&'static str, &'static str)] {
    match suffix {
        topics::HEARTBEAT_SET => &[("cleanup.policy", "delete"), ("retention.ms", "3600000")],
        topics::REPLICA_DELAY => &[("cleanup.policy", "delete"), ("retention.ms", "604800000")],
        topics::ALERT_STATE | topics::PROCESSOR_STATE => &[("cleanup.policy", "compact")],
        _ => &[("cleanup.policy", "delete"), ("retention.ms", "2592000000")],
    }
}

/// `bootstrap.servers` plus the user's properties (which win, so TLS/SASL/tuning are theirs).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    c.set("client.id", "millilag");
    // A monitor should see its broker again within a second of its return (librdkafka's default
    // backoff grows to 10 s, which measured here as up to 9 s of extra catch-up).
    c.set("reconnect.backoff.max.ms", "1000");
    for (k, v) in &kafka.librdkafka_properties() {
        c.set(k, v);
    }
    c
}

fn with_overrides(
    mut base: ClientConfig,
    ours: &[(&str, &str)],
    kafka: &KafkaConfig,
) -> ClientConfig {
    for (k, v) in ours {
        base.set(*k, *v);
    }
    for (k, v) in &kafka.librdkafka_properties() {
        base.set(k, v);
    }
    base
}

/// Idempotent producer, acks=all. `linger_ms` trades latency for batching per service.
pub fn producer(kafka: &KafkaConfig, linger_ms: u32) -> Result<FutureProducer> {
    let linger = linger_ms.to_string();
    Ok(with_overrides(
        client_config(kafka),
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", &linger),
            ("message.timeout.ms", "300000"),
        ],
        kafka,
    )
    .create()?)
}

/// A consumer in `group` that stores offsets only when told to. `fetch_wait_ms` is low for the
/// reader (Tansu answers a fetch only when it expires).
pub fn consumer(kafka: &KafkaConfig, group: &str, fetch_wait_ms: u32) -> Result<StreamConsumer> {
    consumer_with_context(kafka, group, fetch_wait_ms, DefaultConsumerContext)
}

/// [`consumer`] with a [`ConsumerContext`] of the caller's, e.g. one that hears of rebalances.
pub fn consumer_with_context<C: ConsumerContext + 'static>(
    kafka: &KafkaConfig,
    group: &str,
    fetch_wait_ms: u32,
    context: C,
) -> Result<StreamConsumer<C>> {
    let wait = fetch_wait_ms.to_string();
    Ok(with_overrides(
        client_config(kafka),
        &[
            ("group.id", group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", &wait),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("enable.partition.eof", "false"),
        ],
        kafka,
    )
    .create_with_context(context)?)
}

/// Reach the brokers, then create the topics that do not exist yet. "Already exists" is
/// success; anything else is an error naming the topic. An unreachable broker (wrong CA, TLS
/// against a plaintext port, refused SASL credentials...) is an error saying which key to fix
/// (see [`check::reach`]).
pub async fn ensure_topics(config: &Config, suffixes: &[&str]) -> Result<()> {
    if !config.kafka.create_topics {
        return Ok(());
    }
    check::reach(&config.kafka, check::REACH_TIMEOUT).await?;
    let admin: AdminClient<DefaultClientContext> = client_config(&config.kafka).create()?;
    let names: Vec<String> = suffixes.iter().map(|s| config.topic(s)).collect();
    let new: Vec<NewTopic> = names
        .iter()
        .zip(suffixes)
        .map(|(name, suffix)| {
            let mut t = NewTopic::new(
                name,
                config.kafka.partitions,
                TopicReplication::Fixed(config.kafka.replication_factor),
            );
            for (k, v) in topic_configs(suffix) {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
    for r in admin.create_topics(new.iter(), &opts).await? {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                    .map_err(|e| Error::Internal(format!("creating topic {topic}: {e}")))
            }
        }
    }
    Ok(())
}

/// Publish `value` with `key` and wait for the broker's ack.
pub async fn send_record<R: Record>(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &R,
) -> Result<()> {
    let payload = value.encode()?;
    send_bytes(producer, topic, key.as_bytes(), &payload).await
}

pub async fn send_bytes(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::Never,
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| Error::Kafka(e))
}

/// Keep a record that cannot be processed, with the reason, on the dead-letter topic. Waits for
/// the ack: the caller stores the record's offset only after this returns Ok.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    producer: &FutureProducer,
    config: &Config,
    service: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    reason: &str,
) -> Result<()> {
    let record = DeadLetter {
        topic: topic.to_string(),
        partition,
        offset,
        key: key.map(|k| serde_bytes::ByteBuf::from(k.to_vec())),
        payload: payload.map(|p| serde_bytes::ByteBuf::from(p.to_vec())),
        reason: reason.to_string(),
        service: service.to_string(),
        failed_at_us: crate::clock::now_us(),
    };
    let bytes = record.encode()?;
    send_bytes(
        producer,
        &config.topic(topics::DEAD_LETTER),
        key.unwrap_or_default(),
        &bytes,
    )
    .await
}

#[cfg(test)]
mod tests {
    /// The `ssl` feature of rdkafka is what gives TLS and SCRAM (README, "TLS"); a dependency
    /// change that drops it fails here rather than at a user's broker.
    #[test]
    fn librdkafka_is_built_with_tls_and_sasl() {
        let native = rdkafka::config::ClientConfig::new()
            .create_native_config()
            .unwrap();
        let features = native.get("builtin.features").unwrap();
        for want in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(
                features.split(',').any(|f| f == want),
                "{want} missing from {features}"
            );
        }
        assert!(
            !features.split(',').any(|f| f == "sasl_gssapi"),
            "GSSAPI is built in after all: update SASL_MECHANISMS and the README"
        );
    }
}
