//! Publishing `replica-delay` records, and the tickets that tie them to heartbeat offsets.

use super::metrics::ReaderMetrics;
use millilag_core::events::{Record, ReplicaDelay};
use millilag_core::retry::RetryPolicy;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// One consumed heartbeat: done when every replica's record is acknowledged.
pub struct Ticket {
    partition: i32,
    offset: i64,
    remaining: AtomicUsize,
    done: mpsc::UnboundedSender<(i32, i64)>,
}

impl Ticket {
    pub(super) fn new(
        partition: i32,
        offset: i64,
        count: usize,
        done: mpsc::UnboundedSender<(i32, i64)>,
    ) -> Arc<Ticket> {
        let t = Arc::new(Ticket {
            partition,
            offset,
            remaining: AtomicUsize::new(count),
            done,
        });
        if count == 0 {
            t.finish();
        }
        t
    }

    fn complete_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        let _ = self.done.send((self.partition, self.offset));
    }
}

/// Publishes replica-delay records; a record counts for its ticket only once Kafka acked it.
///
/// One task enqueues every record into the producer in the order the replica tasks report them
/// (a task per record would let a burst, e.g. the backlog after a broker outage, reach Kafka
/// reordered, and the processor's event-time windows would count the stragglers as late).
pub struct Output {
    tx: mpsc::UnboundedSender<(ReplicaDelay, Option<Arc<Ticket>>)>,
    pub(super) metrics: ReaderMetrics,
}

impl Output {
    pub(super) fn start(
        producer: FutureProducer,
        topic: String,
        metrics: ReaderMetrics,
    ) -> Arc<Output> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(producer, topic, rx, metrics.clone()));
        Arc::new(Output { tx, metrics })
    }

    /// Publish; replica tasks count their records in their [`ReplicaMetrics`] first. A record
    /// with a ticket counts for its heartbeat's offset once acknowledged.
    pub(super) fn publish(self: &Arc<Self>, rec: ReplicaDelay, ticket: Option<Arc<Ticket>>) {
        // The publisher outlives every Output handle, so this only fails once it is gone.
        let _ = self.tx.send((rec, ticket));
    }
}

/// Enqueue in order; complete each ticket on its ack. Runs until every Output is dropped and
/// every enqueued record is acknowledged (or handed to a retry).
async fn publisher(
    producer: FutureProducer,
    topic: String,
    mut rx: mpsc::UnboundedReceiver<(ReplicaDelay, Option<Arc<Ticket>>)>,
    metrics: ReaderMetrics,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut acks = FuturesUnordered::new();
    let mut open = true;
    while open || !acks.is_empty() {
        tokio::select! {
            next = rx.recv(), if open => {
                let Some((rec, ticket)) = next else {
                    open = false;
                    continue;
                };
                let payload = match rec.encode() {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "Cannot encode replica-delay; this is a bug.");
                        complete(&ticket);
                        continue;
                    }
                };
                let key = rec.key();
                let mut backoff = RetryPolicy::QUEUE_FULL.backoff();
                // The local queue is full only when the broker has been away for long: wait
                // here, keeping the order (the replica tasks' records queue up in the channel).
                let delivery = loop {
                    match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                        Ok(d) => break d,
                        Err((e, _)) => {
                            metrics.publish_retries.inc();
                            tracing::debug!(error = %e, "Producer queue full; waiting.");
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                    }
                };
                acks.push(async move { (delivery.await, rec, ticket) });
            }
            Some((res, rec, ticket)) = acks.next(), if !acks.is_empty() => match res {
                Ok(Ok(_)) => complete(&ticket),
                Ok(Err((e, _))) => {
                    metrics.publish_retries.inc();
                    warn!(error = %e, replica = %rec.replica, seq = rec.seq, "replica-delay not acknowledged; retrying.");
                    tokio::spawn(retry(producer.clone(), topic.clone(), rec, ticket, metrics.clone()));
                }
                Err(_) => {
                    // The producer dropped the delivery (shutting down): not acked, so the
                    // heartbeat's offset is not stored and it is measured again after a restart.
                }
            },
        }
    }
}

/// A record whose delivery failed: retried until acknowledged (its heartbeat's offset waits for
/// it, so nothing is lost while the broker is away).
async fn retry(
    producer: FutureProducer,
    topic: String,
    rec: ReplicaDelay,
    ticket: Option<Arc<Ticket>>,
    metrics: ReaderMetrics,
) {
    let Ok(payload) = rec.encode() else {
        complete(&ticket);
        return;
    };
    let key = rec.key();
    let mut backoff = RetryPolicy::DELIVERY.backoff();
    loop {
        let res = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await;
        match res {
            Ok(_) => break,
            Err((e, _)) => {
                metrics.publish_retries.inc();
                warn!(error = %e, replica = %rec.replica, seq = rec.seq, "replica-delay not acknowledged; retrying.");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    complete(&ticket);
}

fn complete(ticket: &Option<Arc<Ticket>>) {
    if let Some(t) = ticket {
        t.complete_one();
    }
}
