//! `millilag processor`: windows `replica-delay` records, writes every closed window to the
//! sinks, evaluates alert rules and posts webhooks.
//!
//! Data flow, one run loop (this file) and a task per sink / webhook / state writer:
//!
//! ```text
//! replica-delay ─► decode (input.rs, borrowed) ─► Windows (window.rs) ─► closed windows
//!     │ poison ─► dead-letter                                   │
//!     │                            alerts.rs ◄──────────────────┤──► batch ─► every sink task (sinks/)
//!     │                 alert, alert-state ◄─┘ └► webhooks        │           │ ack
//!     │                                                           │  all acked ─► processor-state ─► ack
//!     └──── offsets.rs: store per partition the lowest offset still held by an open
//!           window or an unfinished batch (at-least-once), commit synchronously on shutdown
//! ```
//!
//! Backpressure: when more closed windows than `processor.max_pending_windows` wait for the
//! sinks, the assigned partitions are paused; they resume when the backlog halves. Nothing is
//! dropped: a sink outage only delays.

pub mod alerts;
pub mod input;
pub mod metrics;
pub mod offsets;
pub mod sinks;
pub mod state;
pub mod webhook;
pub mod window;

use anyhow::Context;
use metrics::{labels, Metrics};
use millilag_core::clock::now_us;
use millilag_core::events::Alert;
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::Shutdown;
use millilag_core::Config;
use offsets::OffsetTracker;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sinks::{Batch, SinkHandle};
use state::Flushed;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{error, info, warn};
use window::{Closed, Hold, Spec, Windows};

/// Closed windows are handed to the sinks at least this often...
const DISPATCH_EVERY: Duration = Duration::from_millis(20);
/// ...or as soon as this many are waiting.
const DISPATCH_BATCH: usize = 1_000;
/// librdkafka fetch.wait.max.ms: Tansu answers a fetch only when it expires, so keep it low
/// enough for the end-to-end latency target; real Kafka answers as soon as records arrive.
const FETCH_WAIT_MS: u32 = 10;
/// On shutdown, how long closed windows may take to reach every sink.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);

/// Run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("millilag");
    let metrics = Metrics::new(&mut registry);
    let health = Health::starting();
    let server = bind_and_serve(
        config.processor.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    let rules = config
        .alerts
        .iter()
        .map(alerts::Rule::from_config)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;

    kafka::ensure_topics(
        &config,
        &[
            topics::REPLICA_DELAY,
            topics::DELAY_WINDOW,
            topics::ALERT,
            topics::ALERT_STATE,
            topics::PROCESSOR_STATE,
            topics::DEAD_LETTER,
        ],
    )
    .await
    .context("creating the processor's topics")?;
    let producer = kafka::producer(&config.kafka, 5).context("creating the Kafka producer")?;

    // State first: what was flushed, which incidents are open.
    health.set_not_ready("reading processor-state and alert-state");
    let flushed = state::load_flushed(&config, config.topic(topics::PROCESSOR_STATE))
        .await
        .context("reading the processor-state topic")?;
    let alert_state = state::load_alerts(&config, config.topic(topics::ALERT_STATE))
        .await
        .context("reading the alert-state topic")?;
    let specs: Vec<Spec> = config
        .processor
        .windows
        .iter()
        .map(|w| Spec::new(w.0))
        .collect();
    let mut windows = Windows::new(specs, config.processor.allowed_lateness.0);
    for f in &flushed {
        windows.restore_flushed(
            &f.cluster,
            &f.replica,
            f.window_us,
            f.window_start_us,
            f.last_seq,
        );
    }
    let mut engine = alerts::AlertEngine::new(rules);
    let firing = engine.restore(alert_state);
    for a in &firing {
        metrics
            .alert_firing
            .get_or_create(&labels(&[("rule", &a.rule)]))
            .inc();
    }

    // Sinks, the state writer, alerts and webhooks.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let mut sink_handles = build_sinks(&config, &producer, &ack_tx, &metrics)?;
    drop(ack_tx);
    let (state_ack_tx, mut state_ack_rx) = mpsc::unbounded_channel();
    let (state_tx, state_task) = state::spawn_state_writer(
        producer.clone(),
        config.topic(topics::PROCESSOR_STATE),
        state_ack_tx,
    );
    let generator_url = format!("http://{}/metrics", config.processor.listen);
    let webhooks =
        webhook::Webhooks::spawn(&config.webhooks, &firing, generator_url, metrics.clone())?;
    let (alert_tx, alert_task) = state::spawn_alert_publisher(
        producer.clone(),
        config.topic(topics::ALERT),
        config.topic(topics::ALERT_STATE),
        webhooks,
    );

    let topic = config.topic(topics::REPLICA_DELAY);
    let consumer = kafka::consumer(&config.kafka, &config.processor.group, FETCH_WAIT_MS)
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    health.set_ready();
    info!(
        topic = %topic,
        group = %config.processor.group,
        windows = ?config.processor.windows,
        sinks = sink_handles.len(),
        rules = engine.rules().len(),
        restored_windows = flushed.len(),
        restored_firing = firing.len(),
        "Processor started."
    );

    let mut p = RunLoop {
        config: &config,
        metrics,
        windows,
        engine,
        tracker: OffsetTracker::default(),
        closed: Vec::new(),
        sinks: &sink_handles,
        state_tx: &state_tx,
        alert_tx: &alert_tx,
        producer: &producer,
        topic: topic.clone(),
        paused: false,
        known: BTreeSet::new(),
    };
    let idle_us = i64::try_from(
        config
            .processor
            .idle_close_or_default(&config.reader)
            .as_micros(),
    )
    .unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(DISPATCH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = std::pin::pin!(shutdown.clone().triggered());
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(id) = ack_rx.recv() => p.sink_acked(id),
            Some(id) = state_ack_rx.recv() => p.tracker.state_acked(id),
            _ = tick.tick() => {
                p.windows.close_idle(now_us(), idle_us, &mut p.closed);
                p.dispatch();
                p.store_offsets(&consumer);
                p.backpressure(&consumer);
                p.check_assignment(&consumer);
                p.update_gauges();
            }
            m = consumer.recv() => match m {
                Ok(m) => {
                    if !p.handle(&m, &consumer, &shutdown).await {
                        break;
                    }
                    if p.closed.len() >= DISPATCH_BATCH {
                        p.dispatch();
                    }
                }
                Err(e) => warn!(error = %e, "Kafka consumer error."),
            },
        }
    }

    // Shutdown: stop consuming, flush what closed, wait for the sinks, commit.
    info!(
        pending = p.tracker.pending_windows(),
        "Processor stopping: flushing closed windows."
    );
    health.set_not_ready("shutting down");
    p.dispatch();
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    while p.tracker.pending_batches() > 0 {
        tokio::select! {
            Some(id) = ack_rx.recv() => p.sink_acked(id),
            Some(id) = state_ack_rx.recv() => p.tracker.state_acked(id),
            _ = tokio::time::sleep_until(deadline) => {
                warn!(pending = p.tracker.pending_windows(), "Sinks did not drain before the deadline; those windows are replayed after a restart.");
                break;
            }
        }
    }
    p.store_offsets(&consumer);
    commit_sync(&consumer, &topic, &p.tracker);
    drop(p);
    for h in sink_handles.drain(..) {
        let task = h.close();
        task.abort();
    }
    drop(state_tx);
    state_task.abort();
    drop(alert_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), alert_task).await;
    let _ = server.await;
    info!("Processor stopped.");
    Ok(())
}

fn build_sinks(
    config: &Config,
    producer: &FutureProducer,
    acks: &mpsc::UnboundedSender<u64>,
    metrics: &Metrics,
) -> anyhow::Result<Vec<SinkHandle>> {
    let mut out = Vec::new();
    for (i, c) in config.sink.influxdb.iter().enumerate() {
        let name = format!("influxdb[{i}]");
        let sink = sinks::influx::InfluxSink::new(c).with_context(|| format!("sink.{name}"))?;
        out.push(sinks::spawn(
            name.clone(),
            sink,
            acks.clone(),
            metrics.sink(&name),
        ));
    }
    for (i, c) in config.sink.graphite.iter().enumerate() {
        let name = format!("graphite[{i}]");
        let sink = sinks::graphite::GraphiteSink::new(c);
        out.push(sinks::spawn(
            name.clone(),
            sink,
            acks.clone(),
            metrics.sink(&name),
        ));
    }
    if config.sink.kafka.enabled {
        let name = "kafka".to_string();
        let sink =
            sinks::kafka::KafkaSink::new(producer.clone(), config.topic(topics::DELAY_WINDOW));
        out.push(sinks::spawn(
            name.clone(),
            sink,
            acks.clone(),
            metrics.sink(&name),
        ));
    }
    Ok(out)
}

/// Commit what was stored, synchronously (the last thing before exit).
fn commit_sync(consumer: &StreamConsumer, topic: &str, tracker: &OffsetTracker) {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in tracker.stored() {
        if tpl
            .add_partition_offset(topic, *p, Offset::Offset(*o))
            .is_err()
        {
            return;
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => info!(offsets = ?tracker.stored(), "Offsets committed."),
        Err(e) => {
            error!(error = %e, "Final offset commit failed; records since the last auto-commit will be replayed.")
        }
    }
}

/// The partitions of `topic` assigned to this consumer now.
fn assigned(consumer: &StreamConsumer, topic: &str) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|tpl| {
            tpl.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        })
        .unwrap_or_default()
}

/// The run loop's state.
struct RunLoop<'a> {
    config: &'a Config,
    metrics: Metrics,
    windows: Windows,
    engine: alerts::AlertEngine,
    tracker: OffsetTracker,
    /// Windows closed since the last dispatch.
    closed: Vec<Closed>,
    sinks: &'a [SinkHandle],
    state_tx: &'a state::MarksSender,
    alert_tx: &'a mpsc::Sender<Alert>,
    producer: &'a FutureProducer,
    topic: String,
    paused: bool,
    /// Partitions this consumer owns as far as the run loop knows. A record from any other
    /// partition means a rebalance gave us new partitions: their flush marks are re-read first.
    known: BTreeSet<i32>,
}

impl RunLoop<'_> {
    /// One record. Returns false if shutdown interrupted a dead-letter write (the record is
    /// then neither applied nor stored, so it is read again after the restart).
    async fn handle(
        &mut self,
        m: &BorrowedMessage<'_>,
        consumer: &StreamConsumer,
        shutdown: &Shutdown,
    ) -> bool {
        let (partition, offset) = (m.partition(), m.offset());
        if !self.known.contains(&partition) {
            let first = self.known.is_empty();
            self.known = assigned(consumer, &self.topic);
            self.known.insert(partition);
            if !first {
                self.reload_flushed().await;
            }
        }
        self.metrics.records.inc();
        let decoded = match m.payload() {
            Some(bytes) => input::decode(bytes).map_err(|e| e.to_string()),
            None => Err("empty payload (tombstone)".to_string()),
        };
        match decoded {
            Ok(view) => {
                let r = self
                    .windows
                    .apply(&view, partition, offset, &mut self.closed);
                if r.duplicate > 0 {
                    self.metrics.duplicates.inc();
                }
                if r.replayed > 0 {
                    self.metrics.replayed.inc();
                }
                if r.late > 0 {
                    for (i, spec) in self.windows.specs().iter().enumerate() {
                        if r.late_mask & (1 << i.min(31)) != 0 {
                            self.metrics
                                .late
                                .get_or_create(&labels(&[("window", &spec.label)]))
                                .inc();
                        }
                    }
                }
            }
            Err(reason) => {
                self.metrics.decode_failures.inc();
                warn!(partition, offset, reason = %reason, "Undecodable replica-delay record; sending it to dead-letter.");
                let mut backoff = millilag_core::retry::RetryPolicy::DELIVERY.backoff();
                loop {
                    let r = kafka::dead_letter(
                        self.producer,
                        self.config,
                        "processor",
                        &self.topic,
                        partition,
                        offset,
                        m.key(),
                        m.payload(),
                        &reason,
                    )
                    .await;
                    match r {
                        Ok(()) => break,
                        Err(e) => {
                            if shutdown.is_triggered() {
                                return false;
                            }
                            let d = backoff.next_delay();
                            warn!(error = %e, retry_in = ?d, "Dead-letter write failed; retrying.");
                            tokio::time::sleep(d).await;
                        }
                    }
                }
            }
        }
        self.tracker.consumed(partition, offset);
        true
    }

    /// Hand closed windows to the alert rules and every sink as one batch.
    fn dispatch(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        let mut hold = Hold::default();
        let mut windows = Vec::with_capacity(self.closed.len());
        let mut marks: HashMap<(String, String, i64), Flushed> = HashMap::new();
        for c in self.closed.drain(..) {
            self.metrics
                .windows_closed
                .get_or_create(&labels(&[("window", &c.label)]))
                .inc();
            for a in self.engine.on_window(&c.window) {
                let state = match a.state {
                    millilag_core::events::AlertState::Firing => "firing",
                    millilag_core::events::AlertState::Resolved => "resolved",
                };
                info!(rule = %a.rule, cluster = %a.cluster, replica = %a.replica, state, value = a.value, "Alert transition.");
                let rule = labels(&[("rule", &a.rule)]);
                let g = self.metrics.alert_firing.get_or_create(&rule);
                if state == "firing" {
                    g.inc();
                } else {
                    g.dec();
                }
                self.metrics
                    .alert_transitions
                    .get_or_create(&labels(&[("rule", &a.rule), ("state", state)]))
                    .inc();
                if self.alert_tx.try_send(a).is_err() {
                    warn!("Alert queue full; transition not published.");
                }
            }
            hold.merge(&c.hold);
            let w = &c.window;
            let key = (w.cluster.clone(), w.replica.clone(), w.window_us);
            let newer = marks
                .get(&key)
                .is_none_or(|m| m.window_start_us < w.window_start_us);
            if newer {
                marks.insert(
                    key,
                    Flushed {
                        cluster: w.cluster.clone(),
                        replica: w.replica.clone(),
                        window_us: w.window_us,
                        window_start_us: w.window_start_us,
                        last_seq: c.last_seq,
                    },
                );
            }
            windows.push(c.window);
        }
        let n = windows.len();
        let windows: Arc<[_]> = windows.into();
        let marks: Arc<[Flushed]> = marks.into_values().collect::<Vec<_>>().into();
        let id = self.tracker.push(n, marks.clone(), hold, self.sinks.len());
        for s in self.sinks {
            if !s.send(Batch {
                id,
                windows: windows.clone(),
            }) {
                error!(sink = %s.name, "Sink task is gone.");
            }
        }
        if self.sinks.is_empty() {
            let _ = self.state_tx.send((id, marks));
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics
            .open_windows
            .set(self.windows.open_windows() as i64);
        self.metrics
            .pending_windows
            .set(self.tracker.pending_windows() as i64);
    }

    /// Another processor may have flushed windows of partitions we just got.
    async fn reload_flushed(&mut self) {
        match state::load_flushed(self.config, self.config.topic(topics::PROCESSOR_STATE)).await {
            Ok(marks) => {
                for f in marks {
                    self.windows.restore_flushed(
                        &f.cluster,
                        &f.replica,
                        f.window_us,
                        f.window_start_us,
                        f.last_seq,
                    );
                }
            }
            Err(e) => warn!(error = format!("{e:#}"), "Re-reading processor-state after a rebalance failed; rebuilt windows may overwrite complete points."),
        }
    }

    /// Partitions taken away by a rebalance: drop their open windows (the new owner rebuilds
    /// them from the committed offset) and stop storing offsets for them.
    fn check_assignment(&mut self, consumer: &StreamConsumer) {
        if self.known.is_empty() {
            return;
        }
        let now = assigned(consumer, &self.topic);
        let lost: Vec<i32> = self.known.difference(&now).copied().collect();
        if lost.is_empty() {
            return;
        }
        let dropped = self.windows.forget_partitions(&lost);
        for p in &lost {
            self.tracker.forget_partition(*p);
            self.known.remove(p);
        }
        info!(partitions = ?lost, dropped_windows = dropped, "Partitions revoked; their open windows are left to the new owner.");
    }

    fn sink_acked(&mut self, id: u64) {
        if let Some(marks) = self.tracker.sink_acked(id) {
            let _ = self.state_tx.send((id, marks));
        }
    }

    fn store_offsets(&mut self, consumer: &StreamConsumer) {
        let moved = self.tracker.advance(self.windows.holds());
        if moved.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &moved {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o)) {
                warn!(error = %e, "Building the offset list.");
                return;
            }
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition that was revoked meanwhile: its new owner replays from the last
            // commit, which is at or before what we would have stored.
            warn!(error = %e, "Storing offsets failed.");
            for (p, _) in moved {
                self.tracker.forget_partition(p);
            }
        }
    }

    fn backpressure(&mut self, consumer: &StreamConsumer) {
        let pending = self.tracker.pending_windows();
        let max = self.config.processor.max_pending_windows.max(1);
        let want_pause = if self.paused {
            pending > max / 2
        } else {
            pending > max
        };
        if want_pause == self.paused {
            return;
        }
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let r = if want_pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        match r {
            Ok(()) => {
                self.paused = want_pause;
                self.metrics.paused.set(i64::from(want_pause));
                if want_pause {
                    warn!(pending, max, "Sinks are behind: consumption paused.");
                } else {
                    info!(pending, "Sinks caught up: consumption resumed.");
                }
            }
            Err(e) => warn!(error = %e, "Pausing/resuming partitions failed."),
        }
    }
}
