//! Which clusters still announce heartbeats: the `heartbeats-stale` rule's input.
//!
//! Every processor tails all partitions of `heartbeat-set` from their end (no consumer group,
//! nothing committed: it only needs to know when each cluster's last heartbeat arrived). It
//! is a few hundred small records a second per cluster. Silence of a cluster here means its
//! writer or primary is down; silence of one replica's measurements while its cluster
//! announces means every reader group is down (`alerts/stale.rs`).

use millilag_core::clock::now_us;
use millilag_core::config::Config;
use millilag_core::events::{HeartbeatSet, Record};
use millilag_core::kafka::{client_config, topics};
use millilag_core::retry::RetryPolicy;
use millilag_core::shutdown::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// Fetch wait for the tail: Tansu answers a fetch only when it expires; staleness is judged in
/// seconds, so 100 ms costs nothing.
const FETCH_WAIT_MS: &str = "100";

/// When each cluster's newest heartbeat arrived (processor clock, microseconds), and the
/// writer's interval it announced.
#[derive(Clone, Default)]
pub struct HeartbeatWatch {
    last: Arc<Mutex<HashMap<String, (i64, i64)>>>,
}

impl HeartbeatWatch {
    /// Follow `heartbeat-set` until shutdown, reconnecting with backoff.
    pub fn spawn(config: &Config, shutdown: Shutdown) -> HeartbeatWatch {
        let watch = HeartbeatWatch::default();
        // Every configured cluster is expected to announce, from now on.
        let now = now_us();
        for c in &config.clusters {
            watch.seen(&c.name, now, 0);
        }
        let w = watch.clone();
        let config = config.clone();
        tokio::spawn(async move { w.follow(config, shutdown).await });
        watch
    }

    fn seen(&self, cluster: &str, at: i64, interval_us: i64) {
        let mut m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(cluster) {
            Some((t, i)) => {
                *t = (*t).max(at);
                if interval_us > 0 {
                    *i = interval_us;
                }
            }
            None => {
                m.insert(cluster.to_string(), (at, interval_us));
            }
        }
    }

    /// Each known cluster and when its newest heartbeat arrived.
    pub fn clusters(&self) -> Vec<(String, i64)> {
        let m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(c, (t, _))| (c.clone(), *t)).collect()
    }

    /// Each cluster whose writer announced its interval, with it.
    pub fn intervals(&self) -> Vec<(String, i64)> {
        let m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(_, (_, i))| *i > 0)
            .map(|(c, (_, i))| (c.clone(), *i))
            .collect()
    }

    async fn follow(self, config: Config, mut shutdown: Shutdown) {
        let topic = config.topic(topics::HEARTBEAT_SET);
        let mut backoff = RetryPolicy::RECONNECT.backoff();
        loop {
            let consumer = match tail(&config, &topic) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, topic = %topic, "Cannot follow heartbeat-set; heartbeats-stale alerts wait for it.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = shutdown.wait() => return,
                    }
                }
            };
            backoff.reset();
            loop {
                let m = tokio::select! {
                    m = consumer.recv() => m,
                    _ = shutdown.wait() => return,
                };
                match m {
                    Ok(m) => {
                        if let Some(Ok(h)) = m.payload().map(HeartbeatSet::decode) {
                            self.seen(&h.cluster, now_us(), h.interval_us);
                        }
                    }
                    // librdkafka reconnects by itself; a partition count change needs a new
                    // assignment, which the next error-free start gives.
                    Err(e) => warn!(error = %e, "Following heartbeat-set."),
                }
            }
        }
    }
}

/// A consumer of every partition of `topic` from its end, outside any group.
fn tail(config: &Config, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = client_config(&config.kafka)
        .set(
            "group.id",
            format!("millilag-heartbeat-watch-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    if tpl.count() == 0 {
        anyhow::bail!("topic {topic} has no partitions yet");
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}
