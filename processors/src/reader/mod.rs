//! The reader: consumes `heartbeat-set`, times when every replica of the cluster shows each
//! heartbeat (see [`replica`]), and publishes one `replica-delay` record per (replica, seq).
//!
//! Flow: the consumer loop takes each record from a [`Source`] (undecodable ones go to
//! dead-letter with the reason) and hands it to every replica task of its cluster with a
//! [`Ticket`]. A replica task publishes its record; when Kafka acknowledges it the ticket counts
//! down, and when all replicas' records are acknowledged the heartbeat is finished and the
//! source stores offsets in partition order, so a crash replays from the oldest unfinished
//! heartbeat.
//!
//! Per cluster, a clock task keeps the local-to-primary clock offset (NTP-style over
//! `SELECT UNIX_TIMESTAMP(SYSDATE(6))`, lowest-RTT samples), and with `discover_replicas` a
//! discovery task adds the replicas the primary reports, without a restart.

mod gtid;
mod replica;
mod timing;

use crate::consumer::{Decoded, KafkaConsumer, Source};
use anyhow::{bail, Context};
use millilag_core::clock::{sample_offset, OffsetEstimator};
use millilag_core::config::{ClusterConfig, Config, DbUrl};
use millilag_core::db;
use millilag_core::events::{HeartbeatSet, MeasureStatus, Record, ReplicaDelay};
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::retry::RetryPolicy;
use millilag_core::shutdown::Shutdown;
use millilag_core::telemetry::instance_id;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use replica::{ClusterCtx, Job, ReplicaWorker, Settings};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use millilag_core::metrics::Labels;

/// The reader's metrics.
#[derive(Clone)]
pub struct ReaderMetrics {
    measurements: Family<Labels, Counter>,
    delay: Family<Labels, Histogram>,
    queries: Family<Labels, Counter>,
    upper_bounds: Family<Labels, Counter>,
    events: Counter,
    dead_letters: Counter,
    publish_retries: Counter,
    consumer_lag: Family<Labels, Gauge>,
    replicas: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl ReaderMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ReaderMetrics {
            measurements: Family::default(),
            delay: Family::new_with_constructor(|| {
                Histogram::new(millilag_core::metrics::delay_buckets())
            }),
            queries: Family::default(),
            upper_bounds: Family::default(),
            events: Counter::default(),
            dead_letters: Counter::default(),
            publish_retries: Counter::default(),
            consumer_lag: Family::default(),
            replicas: Family::default(),
            lag: Family::default(),
        };
        registry.register(
            "replica_lag_seconds",
            "Live lag: the age (primary clock) of the oldest announced heartbeat the replica does not show yet; 0 when it shows them all. Fresh to 100 ms while a heartbeat is awaited.",
            m.lag.clone(),
        );
        let r = registry.sub_registry_with_prefix("reader");
        r.register(
            "measurements",
            "replica-delay records by cluster, replica and status",
            m.measurements.clone(),
        );
        r.register(
            "delay_seconds",
            "Measured replication delay (status ok)",
            m.delay.clone(),
        );
        r.register(
            "queries",
            "Queries issued to replicas, by kind (gtid_wait, poll, status)",
            m.queries.clone(),
        );
        r.register("upper_bounds", "ok measurements that are only upper bounds (the replica showed the heartbeat at the first look)", m.upper_bounds.clone());
        r.register(
            "heartbeats",
            "heartbeat-set records consumed",
            m.events.clone(),
        );
        r.register(
            "dead_letters",
            "Records sent to the dead-letter topic",
            m.dead_letters.clone(),
        );
        r.register(
            "publish_retries",
            "replica-delay publishes retried after a Kafka failure",
            m.publish_retries.clone(),
        );
        r.register(
            "consumer_lag",
            "heartbeat-set records not yet consumed, per partition",
            m.consumer_lag.clone(),
        );
        r.register(
            "replicas",
            "Replicas being measured, per cluster",
            m.replicas.clone(),
        );
        m
    }

    fn measured(&self, r: &ReplicaDelay) {
        let l = vec![
            ("cluster", r.cluster.clone()),
            ("replica", r.replica.clone()),
        ];
        let mut ls = l.clone();
        ls.push(("status", r.status.as_str().to_string()));
        self.measurements.get_or_create(&ls).inc();
        if r.status == MeasureStatus::Ok {
            self.delay
                .get_or_create(&l)
                .observe(r.delay_us as f64 / 1e6);
            if r.upper_bound {
                self.upper_bounds.get_or_create(&l).inc();
            }
        }
    }
}

/// One replica's metric handles, resolved once: the hot path only adds to atomics.
pub struct ReplicaMetrics {
    gtid_wait_queries: Counter,
    poll_queries: Counter,
    status_queries: Counter,
    by_status: Vec<(MeasureStatus, Counter)>,
    delay: Histogram,
    upper_bounds: Counter,
    lag: Gauge<f64, AtomicU64>,
}

impl ReplicaMetrics {
    /// The replica's live lag now, in microseconds.
    pub fn set_lag(&self, lag_us: i64) {
        self.lag.set(lag_us as f64 / 1e6);
    }

    pub fn query(&self, kind: QueryKind) {
        match kind {
            QueryKind::GtidWait => self.gtid_wait_queries.inc(),
            QueryKind::Poll => self.poll_queries.inc(),
            QueryKind::Status => self.status_queries.inc(),
        };
    }

    pub fn measured(&self, r: &ReplicaDelay) {
        if let Some((_, c)) = self.by_status.iter().find(|(s, _)| *s == r.status) {
            c.inc();
        }
        if r.status == MeasureStatus::Ok {
            self.delay.observe(r.delay_us as f64 / 1e6);
            if r.upper_bound {
                self.upper_bounds.inc();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum QueryKind {
    GtidWait,
    Poll,
    Status,
}

impl ReaderMetrics {
    pub fn for_replica(&self, cluster: &str, replica: &str) -> ReplicaMetrics {
        let base: Labels = vec![
            ("cluster", cluster.to_string()),
            ("replica", replica.to_string()),
        ];
        let with = |k: &'static str, v: &str| {
            let mut l = base.clone();
            l.push((k, v.to_string()));
            l
        };
        // One statement per handle: get_or_create returns a read guard on the family, and a
        // second insert while it is alive would wait for the write lock forever.
        let counter = |f: &Family<Labels, Counter>, l: &Labels| -> Counter {
            let c = f.get_or_create(l);
            c.clone()
        };
        let gtid_wait_queries = counter(&self.queries, &with("kind", "gtid_wait"));
        let poll_queries = counter(&self.queries, &with("kind", "poll"));
        let status_queries = counter(&self.queries, &with("kind", "status"));
        let by_status = MeasureStatus::ALL
            .iter()
            .map(|s| (*s, counter(&self.measurements, &with("status", s.as_str()))))
            .collect();
        let delay = {
            let h = self.delay.get_or_create(&base);
            h.clone()
        };
        let upper_bounds = counter(&self.upper_bounds, &base);
        let lag = {
            let g = self.lag.get_or_create(&base);
            g.clone()
        };
        ReplicaMetrics {
            lag,
            gtid_wait_queries,
            poll_queries,
            status_queries,
            by_status,
            delay,
            upper_bounds,
        }
    }
}

/// One consumed heartbeat: done when every replica's record is acknowledged.
pub struct Ticket {
    partition: i32,
    offset: i64,
    remaining: AtomicUsize,
    done: mpsc::UnboundedSender<(i32, i64)>,
}

impl Ticket {
    fn new(
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
    metrics: ReaderMetrics,
}

impl Output {
    fn start(producer: FutureProducer, topic: String, metrics: ReaderMetrics) -> Arc<Output> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher(producer, topic, rx, metrics.clone()));
        Arc::new(Output { tx, metrics })
    }

    /// Publish; replica tasks count their records in their [`ReplicaMetrics`] first. A record
    /// with a ticket counts for its heartbeat's offset once acknowledged.
    fn publish(self: &Arc<Self>, rec: ReplicaDelay, ticket: Option<Arc<Ticket>>) {
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

struct ClusterState {
    ctx: Arc<ClusterCtx>,
    replicas: BTreeMap<String, mpsc::Sender<Job>>,
    configured: BTreeSet<String>,
}

/// Replica changes found by discovery.
enum Discovery {
    Add { cluster: String, url: DbUrl },
    Gone { cluster: String, addr: String },
}

/// Capacity of each replica task's queue of heartbeats.
const REPLICA_QUEUE: usize = 4096;

pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.clusters.is_empty() {
        bail!("no [[cluster]] in the config: the reader has nothing to measure");
    }
    let rc = &config.reader;
    let reader_id = rc.reader_id.clone().unwrap_or_else(instance_id);
    let mut registry = Registry::with_prefix("millilag");
    let metrics = ReaderMetrics::new(&mut registry);
    let health = Health::starting();
    let server = bind_and_serve(
        rc.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    kafka::ensure_topics(
        &config,
        &[
            topics::HEARTBEAT_SET,
            topics::REPLICA_DELAY,
            topics::DEAD_LETTER,
        ],
    )
    .await
    .context("creating topics")?;
    // linger 5 ms: records are batched into fewer produce requests (and wake-ups); windows are
    // seconds long, so 5 ms of latency costs nothing.
    let producer = kafka::producer(&config.kafka, 5).context("creating the Kafka producer")?;
    let out = Output::start(
        producer.clone(),
        config.topic(topics::REPLICA_DELAY),
        metrics.clone(),
    );
    let settings = Settings {
        method: rc.method,
        poll_interval: rc.poll_interval.0,
        poll_max_interval: rc.poll_max_interval.0,
        timeout: rc.timeout.0,
        prearm_depth: rc.prearm_depth,
        max_in_flight: rc.max_in_flight_per_replica,
    };

    let (disc_tx, mut disc_rx) = mpsc::unbounded_channel();
    let mut clusters: BTreeMap<String, ClusterState> = BTreeMap::new();
    let mut background = Vec::new();
    for c in &config.clusters {
        let clock = Arc::new(Mutex::new(OffsetEstimator::new(32)));
        let ctx = Arc::new(ClusterCtx {
            name: c.name.clone(),
            table: db::qualified_table(&c.database, &c.table)?,
            reader_id: reader_id.clone(),
            password: c.password.clone(),
            clock: clock.clone(),
            settings: settings.clone(),
        });
        // The first offset estimate before the first measurement, when the primary answers.
        sample_clock(c, &clock, 5).await;
        background.push(tokio::spawn(
            keep_clock(c.clone(), clock, rc.clock_refresh.0, shutdown.clone())
                .instrument(info_span!("clock", cluster = %c.name)),
        ));
        if c.discover_replicas {
            background.push(tokio::spawn(
                discover(
                    c.clone(),
                    rc.discovery_interval.0,
                    disc_tx.clone(),
                    shutdown.clone(),
                )
                .instrument(info_span!("discovery", cluster = %c.name)),
            ));
        }
        let mut state = ClusterState {
            ctx,
            replicas: BTreeMap::new(),
            configured: c.replicas.iter().map(|r| r.address()).collect(),
        };
        for r in &c.replicas {
            add_replica(&mut state, r.clone(), &out, &shutdown);
        }
        metrics
            .replicas
            .get_or_create(&vec![("cluster", c.name.clone())])
            .set(state.replicas.len() as i64);
        clusters.insert(c.name.clone(), state);
    }

    let source = Source::subscribe(
        &config,
        "reader",
        &rc.group,
        topics::HEARTBEAT_SET,
        rc.fetch_wait.as_millis().max(1) as u32,
        producer.clone(),
    )?;
    background.push(tokio::spawn(report_lag(
        source.consumer().clone(),
        source.topic().to_string(),
        metrics.clone(),
        shutdown.clone(),
    )));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    health.set_ready();
    info!(reader_id = %reader_id, group = %rc.group, method = ?rc.method, "Reader started.");

    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            Some((p, o)) = done_rx.recv() => {
                // The reader keeps nothing per partition beyond what the source drops itself.
                source.rebalanced();
                source.finish(p, o);
            }
            Some(d) = disc_rx.recv() => match d {
                Discovery::Add { cluster, url } => {
                    if let Some(state) = clusters.get_mut(&cluster) {
                        if !state.replicas.contains_key(&url.address()) {
                            info!(cluster = %cluster, replica = %url.address(), "Discovered a new replica; measuring it.");
                            add_replica(state, url, &out, &shutdown);
                            metrics.replicas.get_or_create(&vec![("cluster", cluster.clone())]).set(state.replicas.len() as i64);
                        }
                    }
                }
                Discovery::Gone { cluster, addr } => {
                    if let Some(state) = clusters.get_mut(&cluster) {
                        if !state.configured.contains(&addr) && state.replicas.remove(&addr).is_some() {
                            warn!(cluster = %cluster, replica = %addr, "Replica no longer reported by the primary; stopped measuring it.");
                            metrics.replicas.get_or_create(&vec![("cluster", cluster.clone())]).set(state.replicas.len() as i64);
                        }
                    }
                }
            },
            msg = source.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "Kafka consumer error.");
                        continue;
                    }
                };
                // A partition revoked during this poll: its unfinished heartbeats no longer
                // count (the source drops them; the new owner measures them again).
                source.rebalanced();
                let (p, o) = (msg.partition(), msg.offset());
                metrics.events.inc();
                let event = match source.decode(&msg, HeartbeatSet::decode, &shutdown).await {
                    Decoded::Record(e) => e,
                    Decoded::Poison => {
                        metrics.dead_letters.inc();
                        source.done(p, o);
                        continue;
                    }
                    // Left unstored: the record is read again after the restart.
                    Decoded::Interrupted => break,
                };
                let Some(state) = clusters.get(&event.cluster) else {
                    // Another deployment's cluster on a shared topic: not ours to measure.
                    source.done(p, o);
                    continue;
                };
                source.begin(p, o);
                let event = Arc::new(event);
                let ticket = Ticket::new(p, o, state.replicas.len(), done_tx.clone());
                for (addr, tx) in &state.replicas {
                    let job = Job { event: event.clone(), ticket: ticket.clone() };
                    if let Err(err) = tx.try_send(job) {
                        // The replica task is hopelessly behind (or gone): count it, never block.
                        let job = match err {
                            mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                        };
                        let rec = skipped(&state.ctx, addr, &job.event);
                        metrics.measured(&rec);
                        out.publish(rec, Some(job.ticket));
                    }
                }
            }
        }
    }
    info!("Reader stopping: finishing publishes and committing offsets.");
    drop(clusters);
    // Let acknowledged work store its offsets for a moment, then commit what is stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while source.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((p, o))) => source.finish(p, o),
            _ => break,
        }
    }
    source.commit();
    for b in background {
        b.abort();
    }
    let _ = server.await;
    info!("Reader stopped.");
    Ok(())
}

fn skipped(ctx: &ClusterCtx, replica: &str, e: &HeartbeatSet) -> ReplicaDelay {
    let now = millilag_core::clock::now_us();
    ReplicaDelay {
        cluster: ctx.name.clone(),
        replica: replica.to_string(),
        primary: e.primary.clone(),
        seq: e.seq,
        committed_at_us: e.committed_at_us,
        delay_us: (now - e.committed_at_us).max(0),
        uncertainty_us: 0,
        method: ctx.settings.method_for(e.gtid.as_deref()),
        status: MeasureStatus::Skipped,
        upper_bound: false,
        observed_at_us: now,
        reader_id: ctx.reader_id.clone(),
        queries: 0,
    }
}

fn add_replica(state: &mut ClusterState, url: DbUrl, out: &Arc<Output>, shutdown: &Shutdown) {
    let (tx, rx) = mpsc::channel(REPLICA_QUEUE);
    let addr = url.address();
    let worker = ReplicaWorker::new(state.ctx.clone(), url, out.clone());
    let span = info_span!("replica", cluster = %state.ctx.name, replica = %addr);
    tokio::spawn(worker.run(rx, shutdown.clone()).instrument(span));
    state.replicas.insert(addr, tx);
}

async fn sample_clock(c: &ClusterConfig, clock: &Mutex<OffsetEstimator>, n: usize) -> bool {
    let Ok(mut conn) = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose())).await
    else {
        return false;
    };
    for _ in 0..n {
        match sample_offset(&mut conn).await {
            Ok(s) => clock.lock().unwrap_or_else(|p| p.into_inner()).add(s),
            Err(_) => return false,
        }
    }
    let _ = conn.disconnect().await;
    true
}

/// Re-estimate the clock offset to the primary every `every`.
async fn keep_clock(
    c: ClusterConfig,
    clock: Arc<Mutex<OffsetEstimator>>,
    every: Duration,
    mut shutdown: Shutdown,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let ok = sample_clock(&c, &clock, 5).await;
        if !ok && !warned {
            warn!(primary = %c.primary.address(), "Cannot reach the primary to refresh the clock offset; using the last estimate.");
        }
        warned = !ok;
    }
}

/// Every `every`, ask the primary which replicas it has and report changes.
async fn discover(
    c: ClusterConfig,
    every: Duration,
    tx: mpsc::UnboundedSender<Discovery>,
    mut shutdown: Shutdown,
) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        match list_replicas(&c).await {
            Ok(found) => {
                let now: BTreeSet<String> = found.iter().map(|u| u.address()).collect();
                for u in found {
                    if !known.contains(&u.address()) {
                        let _ = tx.send(Discovery::Add {
                            cluster: c.name.clone(),
                            url: u,
                        });
                    }
                }
                for gone in known.difference(&now) {
                    let _ = tx.send(Discovery::Gone {
                        cluster: c.name.clone(),
                        addr: gone.clone(),
                    });
                }
                known = now;
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "Replica discovery failed; keeping the current list."
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}

async fn list_replicas(c: &ClusterConfig) -> anyhow::Result<Vec<DbUrl>> {
    let addr = c.primary.address();
    let mut conn = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose())).await?;
    let dialect = db::dialect(&mut conn, &addr).await?;
    let hosts = db::replica_hosts(&mut conn, &dialect, &addr)
        .await
        .context(
        "listing replicas (needs REPLICATION MASTER ADMIN on MariaDB, REPLICATION SLAVE on MySQL)",
    )?;
    let _ = conn.disconnect().await;
    Ok(hosts
        .into_iter()
        .map(|(h, p)| c.primary.with_address(&h, p))
        .collect())
}

/// Consumer lag per partition, every 5 s (a blocking metadata call, off the hot path).
async fn report_lag(
    consumer: Arc<KafkaConsumer>,
    topic: String,
    metrics: ReaderMetrics,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => return,
        }
        let c = consumer.clone();
        let t = topic.clone();
        let lags = tokio::task::spawn_blocking(move || -> Vec<(i32, i64)> {
            let Ok(assignment) = c.assignment() else {
                return vec![];
            };
            let Ok(positions) = c.position() else {
                return vec![];
            };
            assignment
                .elements_for_topic(&t)
                .iter()
                .filter_map(|e| {
                    let (_, high) = c
                        .fetch_watermarks(&t, e.partition(), Duration::from_secs(2))
                        .ok()?;
                    let pos = positions
                        .find_partition(&t, e.partition())
                        .and_then(|p| p.offset().to_raw())
                        .unwrap_or(0);
                    Some((e.partition(), (high - pos).max(0)))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for (p, lag) in lags {
            metrics
                .consumer_lag
                .get_or_create(&vec![("partition", p.to_string())])
                .set(lag);
        }
    }
}
