//! The publisher: heartbeats reach Kafka through a bounded queue, so the schedule never waits
//! on the broker; deliveries settle in the background and are counted.

use super::{Announcement, ClusterMetrics};
use futures::stream::{FuturesUnordered, StreamExt};
use millilag_core::events::Record;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, warn};

/// Hands heartbeats to Kafka without ever blocking the schedule.
pub(super) async fn publish(
    producer: FutureProducer,
    topic: String,
    mut rx: mpsc::Receiver<Announcement>,
) {
    /// A delivery's outcome: the cluster (for the log line), its metrics, the result.
    type Settled = (String, Arc<ClusterMetrics>, Result<(), String>);
    type Delivery = std::pin::Pin<Box<dyn std::future::Future<Output = Settled> + Send>>;
    let mut inflight: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let settle = |(cluster, metrics, res): Settled| match res {
        Ok(()) => {
            metrics.published.inc();
        }
        Err(e) => {
            metrics.publish_failures.inc();
            warn!(cluster = %cluster, error = %e, "Heartbeat not acknowledged by Kafka.");
        }
    };
    loop {
        tokio::select! {
            biased;
            Some(settled) = inflight.next(), if !inflight.is_empty() => settle(settled),
            msg = rx.recv() => {
                let Some(Announcement { record: h, metrics }) = msg else { break };
                let payload = match h.encode() {
                    Ok(p) => p,
                    Err(e) => {
                        error!(error = %e, "Cannot encode heartbeat-set; this is a bug.");
                        continue;
                    }
                };
                let record = FutureRecord::to(&topic).key(&h.cluster).payload(&payload);
                // Enqueue without waiting: librdkafka retries until message.timeout.ms and the
                // delivery future resolves on the broker's ack. A full librdkafka queue means
                // Kafka is down for long: drop and count rather than delay heartbeats.
                match producer.send_result(record) {
                    Ok(delivery) => {
                        let cluster = h.cluster;
                        inflight.push(Box::pin(async move {
                            let res = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((e, _))) => Err(e.to_string()),
                                Err(_) => Err("producer dropped the delivery".to_string()),
                            };
                            (cluster, metrics, res)
                        }));
                    }
                    Err((e, _)) => {
                        metrics.publish_dropped.inc();
                        warn!(cluster = %h.cluster, error = %e, "Kafka producer queue refused a heartbeat; dropped.");
                    }
                }
            }
        }
    }
    while let Some(settled) = inflight.next().await {
        settle(settled);
    }
    let _ = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer.flush(Timeout::After(Duration::from_secs(10)))
    })
    .await;
}
