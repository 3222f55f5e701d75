//! The processor's state on Kafka: two compacted topics, read fully at start.
//!
//! - `<prefix>processor-state`, key `cluster/replica/window_us`: the last window start flushed
//!   to every sink (JSON [`Flushed`]). After a restart the consumer resumes from the committed
//!   offset, which may be inside windows that were already flushed; those are skipped instead
//!   of being rebuilt from part of their records and overwriting the complete point.
//! - `<prefix>alert-state`, key fingerprint: the latest [`Alert`] transition, so a restarted
//!   processor neither re-announces a firing incident nor forgets to resolve it.
//!
//! Flush marks are written by a task that retries with backoff and acknowledges a batch only
//! after the broker did; the run loop stores offsets only after that. Alert transitions are
//! written by `alerts/publisher.rs`.

use anyhow::{bail, Context};
use futures::future::try_join_all;
use millilag_core::config::Config;
use millilag_core::events::{Alert, Record};
use millilag_core::kafka::{client_config, send_bytes};
use millilag_core::retry::RetryPolicy;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// (key, value) as read from a topic; value None is a tombstone.
pub type KeyedRecords = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// Flush marks of one batch, on their way to the processor-state topic.
pub type MarksSender = mpsc::UnboundedSender<(u64, Arc<[Flushed]>)>;

/// The last flushed window of one (cluster, replica, length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub cluster: String,
    pub replica: String,
    pub window_us: i64,
    pub window_start_us: i64,
    /// The window's highest seq, so the next window counts the boundary gap after a restart.
    #[serde(default)]
    pub last_seq: Option<i64>,
}

impl Flushed {
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.cluster, self.replica, self.window_us)
    }
}

/// Every record of `topic`, oldest first, up to the end it had when we started reading.
/// Blocking (librdkafka); run it on a blocking thread.
pub fn read_to_end(
    config: &Config,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<KeyedRecords> {
    let consumer: BaseConsumer = client_config(&config.kafka)
        .set(
            "group.id",
            format!("millilag-state-reader-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the state reader")?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("offsets of {topic} [{p}]"))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic}: not at the end after {timeout:?} (partitions left: {ends:?})");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    out.push((k.to_vec(), m.payload().map(|p| p.to_vec())));
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|e| m.offset() + 1 >= *e)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => warn!(error = %e, topic, "Reading state topic."),
            None => {}
        }
    }
    Ok(out)
}

/// Latest value per key (a compacted topic's meaning); a tombstone deletes.
fn latest(records: KeyedRecords) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (k, v) in records {
        match v {
            Some(v) => {
                m.insert(k, v);
            }
            None => {
                m.remove(&k);
            }
        }
    }
    m
}

pub async fn load_flushed(config: &Config, topic: String) -> anyhow::Result<Vec<Flushed>> {
    let c = config.clone();
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&c, &topic, Duration::from_secs(60)))
            .await??;
    let mut out = Vec::new();
    for (k, v) in latest(records) {
        match serde_json::from_slice::<Flushed>(&v) {
            Ok(f) => out.push(f),
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(&k), error = %e, "Ignoring unreadable processor-state record.")
            }
        }
    }
    info!(windows = out.len(), "Processor state loaded.");
    Ok(out)
}

pub async fn load_alerts(config: &Config, topic: String) -> anyhow::Result<Vec<Alert>> {
    let c = config.clone();
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&c, &topic, Duration::from_secs(60)))
            .await??;
    let mut out = Vec::new();
    for (k, v) in latest(records) {
        match Alert::decode(&v) {
            Ok(a) => out.push(a),
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(&k), error = %e, "Ignoring unreadable alert-state record.")
            }
        }
    }
    Ok(out)
}

/// Writes the flush marks of each completed batch, then acknowledges the batch id.
pub fn spawn_state_writer(
    producer: FutureProducer,
    topic: String,
    acks: mpsc::UnboundedSender<u64>,
) -> (MarksSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Arc<[Flushed]>)>();
    let task = tokio::spawn(async move {
        while let Some((id, marks)) = rx.recv().await {
            let mut backoff = RetryPolicy::DELIVERY.backoff();
            loop {
                let sends = marks.iter().map(|f| {
                    let key = f.key();
                    let value = serde_json::to_vec(f).unwrap_or_default();
                    let (producer, topic) = (&producer, &topic);
                    async move { send_bytes(producer, topic, key.as_bytes(), &value).await }
                });
                match try_join_all(sends).await {
                    Ok(_) => break,
                    Err(e) => {
                        let d = backoff.next_delay();
                        warn!(error = %e, retry_in = ?d, "Writing processor-state failed; retrying.");
                        tokio::time::sleep(d).await;
                    }
                }
            }
            if acks.send(id).is_err() {
                return;
            }
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_value_per_key_wins_and_tombstones_delete() {
        let m = latest(vec![
            (b"a".to_vec(), Some(b"1".to_vec())),
            (b"b".to_vec(), Some(b"1".to_vec())),
            (b"a".to_vec(), Some(b"2".to_vec())),
            (b"b".to_vec(), None),
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[&b"a".to_vec()], b"2".to_vec());
    }

    #[test]
    fn flush_mark_round_trips() {
        let f = Flushed {
            cluster: "main".into(),
            replica: "127.0.0.1:3307".into(),
            window_us: 1_000_000,
            window_start_us: 5_000_000,
            last_seq: Some(9),
        };
        assert_eq!(f.key(), "main/127.0.0.1:3307/1000000");
        let back: Flushed = serde_json::from_slice(&serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
