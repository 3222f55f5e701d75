//! Publishing `replica-delay` records, and the tickets that tie them to heartbeat offsets.
//!
//! ```text
//! replica tasks ─► Output::publish (takes a Backlog slot; waits when none is left)
//!                        │ bounded queue, in the order the records were published
//!                        ▼
//!                  publisher task ─► producer ─► acks, in the order sent ─► ticket, slot back
//!                        ▲                         │ failed
//!                        └── retried in order, ◄───┘
//!                            before anything newer
//! ```
//!
//! One task sends every record, so a burst (the backlog after a broker outage) reaches Kafka in
//! the order the replica tasks reported it; the processor's event-time windows would count
//! stragglers as late. A delivery that fails is sent again with backoff, with every other
//! failed record in their original order, and nothing newer is sent until they are all
//! acknowledged. (Records sent after a failed one and acknowledged before the failure was known
//! do land before its retry: the idempotent producer fails a partition's later records with it,
//! so this takes a failure particular to one record.)

use super::backlog::{Backlog, Slot};
use super::metrics::ReaderMetrics;
use millilag_core::events::{Record, ReplicaDelay};
use millilag_core::retry::{Backoff, RetryPolicy};
use millilag_core::shutdown::Shutdown;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

/// After shutdown, how long acknowledgements of records already sent are still awaited (the
/// reader waits as long for them before its final commit).
pub(super) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

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

/// A record on its way: encoded once, sent until acknowledged.
struct Outgoing {
    key: String,
    payload: Vec<u8>,
    replica: String,
    seq: i64,
    ticket: Option<Arc<Ticket>>,
    /// Given back to the backlog when this is dropped: acknowledged, or abandoned at shutdown.
    slot: Slot,
}

impl Outgoing {
    /// Acknowledged: counts for its heartbeat's offset, then leaves the backlog (so that once
    /// the backlog is empty, every acknowledged record has counted: see [`Output::drained`]).
    fn acknowledged(self) {
        let Outgoing { ticket, slot, .. } = self;
        if let Some(t) = ticket {
            t.complete_one();
        }
        drop(slot);
    }
}

/// Publishes replica-delay records; a record counts for its ticket only once Kafka acked it.
pub struct Output {
    tx: mpsc::Sender<Outgoing>,
    backlog: Arc<Backlog>,
    shutdown: Shutdown,
    pub(super) metrics: ReaderMetrics,
}

impl Output {
    /// Start the publisher. At most `max_pending` records wait for an acknowledgement; the
    /// receiver says when the reader should pause its input (see `backlog.rs`).
    pub(super) fn start(
        producer: FutureProducer,
        topic: String,
        max_pending: usize,
        metrics: ReaderMetrics,
        shutdown: Shutdown,
    ) -> (Arc<Output>, watch::Receiver<bool>) {
        let (backlog, pause) = Backlog::new(max_pending, metrics.publish_queue.clone());
        // As long as the backlog: a record holds a slot while queued, so sends never wait here.
        let (tx, rx) = mpsc::channel(max_pending.max(1));
        let publisher = Publisher {
            producer,
            topic,
            metrics: metrics.clone(),
            in_flight: InFlight::default(),
            failed: VecDeque::new(),
            backoff: RetryPolicy::DELIVERY.backoff(),
        };
        tokio::spawn(publisher.run(rx, shutdown.clone()));
        let out = Output {
            tx,
            backlog,
            shutdown,
            metrics,
        };
        (Arc::new(out), pause)
    }

    /// Publish; replica tasks count their records in their [`ReplicaMetrics`] first. A record
    /// with a ticket counts for its heartbeat's offset once acknowledged. Waits while the
    /// backlog is full; on shutdown the record is dropped, unacknowledged, so its heartbeat's
    /// offset is not stored and it is measured again after the restart.
    ///
    /// [`ReplicaMetrics`]: super::ReplicaMetrics
    pub(super) async fn publish(&self, rec: ReplicaDelay, ticket: Option<Arc<Ticket>>) {
        let payload = match rec.encode() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "Cannot encode replica-delay; this is a bug.");
                if let Some(t) = &ticket {
                    t.complete_one();
                }
                return;
            }
        };
        let Some(slot) = self.backlog.take(&self.shutdown).await else {
            return;
        };
        let outgoing = Outgoing {
            key: rec.key(),
            payload,
            replica: rec.replica,
            seq: rec.seq,
            ticket,
            slot,
        };
        // Never full (see `start`); fails only once the publisher is gone, at shutdown.
        let _ = self.tx.send(outgoing).await;
    }
}

impl Output {
    /// Once every record published so far is acknowledged, or given up at shutdown.
    pub(super) async fn drained(&self) {
        self.backlog.drained().await;
    }
}

/// The one task that talks to the producer.
struct Publisher {
    producer: FutureProducer,
    topic: String,
    metrics: ReaderMetrics,
    /// Sent, awaiting the broker's answer, in the order sent.
    in_flight: InFlight,
    /// Failed, in the order they were first sent: sent again before anything newer.
    failed: VecDeque<Outgoing>,
    backoff: Backoff,
}

/// What became of a record handed to the producer.
enum Delivery {
    Sent(DeliveryFuture),
    /// The producer would not take it: a failed delivery, known at once.
    Refused(KafkaError),
}

/// Deliveries in the order sent, answered in that order. Only the oldest is polled: the
/// records of one partition are acknowledged in order anyway, and a boxed future plus a
/// FuturesOrdered task per record were allocations and wake-ups on every measurement.
#[derive(Default)]
struct InFlight(VecDeque<(Delivery, Outgoing)>);

impl InFlight {
    fn push_back(&mut self, delivery: Delivery, outgoing: Outgoing) {
        self.0.push_back((delivery, outgoing));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest delivery's answer, once it has one.
    fn next(&mut self) -> NextAnswer<'_> {
        NextAnswer(self)
    }
}

struct NextAnswer<'a>(&'a mut InFlight);

impl Future for NextAnswer<'_> {
    type Output = (Result<(), KafkaError>, Outgoing);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((delivery, _)) = self.0 .0.front_mut() else {
            return Poll::Pending;
        };
        let result = match delivery {
            Delivery::Refused(e) => Err(e.clone()),
            Delivery::Sent(f) => match Pin::new(f).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(_))) => Ok(()),
                Poll::Ready(Ok(Err((e, _)))) => Err(e),
                // The producer dropped it (shutting down).
                Poll::Ready(Err(_)) => Err(KafkaError::Canceled),
            },
        };
        let (_, outgoing) = self.0 .0.pop_front().expect("the front was just polled");
        Poll::Ready((result, outgoing))
    }
}

impl Publisher {
    /// Until every [`Output`] is dropped and everything queued is acknowledged, or
    /// [`SHUTDOWN_DRAIN`] after shutdown.
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, shutdown: Shutdown) {
        let mut open = true;
        // Set after a failure: nothing new is sent until the failed records are delivered.
        let mut recovering = false;
        let mut retry_at = Instant::now();
        let mut stop = std::pin::pin!(shutdown.clone().triggered());
        let mut drain_until: Option<Instant> = None;
        loop {
            if !open && self.in_flight.is_empty() && self.failed.is_empty() {
                return;
            }
            let retry_due = recovering && self.in_flight.is_empty() && !self.failed.is_empty();
            tokio::select! {
                biased;
                _ = &mut stop, if drain_until.is_none() => {
                    // Failed records are not sent again: unacknowledged, their heartbeats'
                    // offsets stay unstored.
                    self.failed.clear();
                    drain_until = Some(Instant::now() + SHUTDOWN_DRAIN);
                }
                _ = sleep_until_opt(drain_until) => return,
                (result, outgoing) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    match result {
                        Ok(()) => outgoing.acknowledged(),
                        // Shutting down: left unacknowledged (see above).
                        Err(e) if drain_until.is_some() => {
                            warn!(error = %e, replica = %outgoing.replica, seq = outgoing.seq, "replica-delay not acknowledged before shutdown.");
                        }
                        Err(e) => {
                            if self.failed.is_empty() {
                                retry_at = Instant::now() + self.backoff.next_delay();
                            }
                            self.failed(e, outgoing);
                            recovering = true;
                        }
                    }
                    if recovering && self.in_flight.is_empty() && self.failed.is_empty() {
                        info!("replica-delay deliveries acknowledged again.");
                        recovering = false;
                        self.backoff.reset();
                    }
                }
                // Everything sent before has an answer: resend the failures, oldest first.
                _ = tokio::time::sleep_until(retry_at), if retry_due => {
                    for outgoing in std::mem::take(&mut self.failed) {
                        self.send(outgoing, &shutdown).await;
                    }
                }
                next = rx.recv(), if open && !recovering => match next {
                    Some(outgoing) => self.send(outgoing, &shutdown).await,
                    None => open = false,
                },
            }
        }
    }

    /// Hand `outgoing` to the producer; a full local queue is waited out (the broker is slow
    /// or away), any other refusal counts as a failed delivery.
    async fn send(&mut self, outgoing: Outgoing, shutdown: &Shutdown) {
        let mut full = RetryPolicy::QUEUE_FULL.backoff();
        let mut stop = shutdown.clone();
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(&outgoing.key)
                .payload(&outgoing.payload);
            let refused = match self.producer.send_result(record) {
                Ok(delivery) => {
                    return self.in_flight.push_back(Delivery::Sent(delivery), outgoing)
                }
                Err((e, _)) => e,
            };
            if refused != KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) {
                return self
                    .in_flight
                    .push_back(Delivery::Refused(refused), outgoing);
            }
            self.metrics.publish_retries.inc();
            tokio::select! {
                _ = tokio::time::sleep(full.next_delay()) => {}
                // Dropped unacknowledged: measured again after the restart.
                _ = stop.wait() => return,
            }
        }
    }

    fn failed(&mut self, e: KafkaError, outgoing: Outgoing) {
        self.metrics.publish_retries.inc();
        warn!(error = %e, replica = %outgoing.replica, seq = outgoing.seq, "replica-delay not acknowledged; retrying in order.");
        self.failed.push_back(outgoing);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::config::Config;
    use millilag_core::events::{MeasureMethod, MeasureStatus};
    use millilag_core::kafka;
    use prometheus_client::registry::Registry;
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    fn record(seq: i64) -> ReplicaDelay {
        ReplicaDelay {
            cluster: "main".into(),
            replica: "db2:3306".into(),
            primary: "db1:3306".into(),
            seq,
            committed_at_us: seq * 10_000,
            delay_us: 1_000,
            uncertainty_us: 50,
            method: MeasureMethod::GtidWait,
            status: MeasureStatus::Ok,
            upper_bound: false,
            observed_at_us: seq * 10_000 + 1_000,
            reader_id: "test".into(),
            queries: 1,
        }
    }

    /// Publish `seqs` every 2 ms (records keep coming while deliveries fail), a ticket each,
    /// and wait until every one is acknowledged.
    async fn publish_all(out: &Arc<Output>, seqs: std::ops::RangeInclusive<i64>) {
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let n = seqs.clone().count();
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        for seq in seqs {
            pace.tick().await;
            let ticket = Ticket::new(0, seq, 1, done_tx.clone());
            out.publish(record(seq), Some(ticket)).await;
        }
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(30), done.recv())
                .await
                .expect("acknowledged in time")
                .expect("ticket done");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_deliveries_are_retried_in_order_before_anything_newer() {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t.replica-delay", 1, 1).expect("topic");
        let toml = format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"t.\"\n",
            mock.bootstrap_servers()
        );
        let config = Config::from_toml_with_env(&toml, "test", Vec::new()).expect("config");
        let metrics = ReaderMetrics::new(&mut Registry::default());
        let producer = kafka::producer(&config.kafka, 5).expect("producer");
        let (trigger, shutdown) = millilag_core::shutdown::shutdown_pair();
        let (out, _pause) = Output::start(
            producer,
            "t.replica-delay".into(),
            100,
            metrics.clone(),
            shutdown,
        );
        publish_all(&out, 1..=5).await;

        // The broker refuses the next produce requests for good (librdkafka does not retry
        // these itself): the publisher must send those records again, in order.
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
        );
        publish_all(&out, 6..=200).await;
        assert!(metrics.publish_retries.get() > 0, "deliveries failed");
        assert_eq!(metrics.publish_queue.get(), 0, "every slot given back");

        let consumer = kafka::consumer(&config.kafka, "verify", 10).expect("consumer");
        consumer.subscribe(&["t.replica-delay"]).expect("subscribe");
        let mut seqs = Vec::new();
        while seqs.len() < 200 {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .expect("a record in time")
                .expect("no consumer error");
            let r = ReplicaDelay::decode(m.payload().expect("payload")).expect("decodes");
            seqs.push(r.seq);
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "each once, in order");
        trigger.trigger();
    }
}
