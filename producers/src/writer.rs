//! The writer: heartbeat UPDATEs on every primary, each announced as a `heartbeat-set` record.
//!
//! Per cluster, one task keeps a session on the primary and runs a drift-free schedule: tick n
//! is due at start + n * interval; a tick that comes too late is skipped and counted, never
//! bunched, and the next UPDATE starts only after the previous one returned (one in flight).
//! Each tick is one round trip: the upsert, then in the same multi-statement query the
//! transaction's GTID and the primary's `SYSDATE(6)` — the commit time on the primary's own
//! clock, so no writer clock is involved in any delay.
//!
//! Failover: every writer of a cluster asks for `GET_LOCK('millilag.writer.<cluster>', 0)` on its
//! heartbeat session; the holder writes, the others retry every interval. The lock dies with the
//! session, so a killed writer is replaced about one interval after its connection drops. The
//! new leader continues from the row's seq and announces a larger writer_epoch.
//!
//! Publishing never blocks the schedule: records go through a bounded queue to a publisher task
//! (idempotent producer, acks=all); when the queue is full the record is dropped and counted.
//! Each cluster's metric handles are resolved once at start and travel with its records, so a
//! heartbeat never builds a label set.

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use millilag_core::clock::now_us;
use millilag_core::config::{ClusterConfig, Config};
use millilag_core::db::{self, Dialect};
use millilag_core::error::{Error, ErrorDomain};
use millilag_core::events::{HeartbeatSet, Record};
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::retry::RetryPolicy;
use millilag_core::shutdown::Shutdown;
use millilag_core::telemetry::instance_id;
use mysql_async::prelude::*;
use mysql_async::Conn;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, info_span, warn, Instrument};

use millilag_core::metrics::{labels, Labels};

/// The writer's metric families, labelled by cluster; [`WriterMetrics::for_cluster`] gives one
/// cluster's series.
#[derive(Clone)]
pub struct WriterMetrics {
    heartbeats: Family<Labels, Counter>,
    skipped_ticks: Family<Labels, Counter>,
    publish_failures: Family<Labels, Counter>,
    publish_dropped: Family<Labels, Counter>,
    published: Family<Labels, Counter>,
    db_errors: Family<Labels, Counter>,
    leader: Family<Labels, Gauge>,
    interval: Family<Labels, Gauge<f64, AtomicU64>>,
    commit_latency: Family<Labels, Histogram>,
}

impl WriterMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = WriterMetrics {
            heartbeats: Family::default(),
            skipped_ticks: Family::default(),
            publish_failures: Family::default(),
            publish_dropped: Family::default(),
            published: Family::default(),
            db_errors: Family::default(),
            leader: Family::default(),
            interval: Family::default(),
            commit_latency: Family::new_with_constructor(|| {
                // 100 us .. ~3.3 s
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0001, 2.0, 16,
                ))
            }),
        };
        let r = registry.sub_registry_with_prefix("writer");
        r.register(
            "heartbeats",
            "Heartbeats the primary acknowledged",
            m.heartbeats.clone(),
        );
        r.register(
            "skipped_ticks",
            "Ticks skipped because the previous heartbeat ran late",
            m.skipped_ticks.clone(),
        );
        r.register(
            "published",
            "heartbeat-set records acknowledged by Kafka",
            m.published.clone(),
        );
        r.register(
            "publish_failures",
            "heartbeat-set records Kafka did not acknowledge",
            m.publish_failures.clone(),
        );
        r.register(
            "publish_dropped",
            "heartbeat-set records dropped because the publish queue was full",
            m.publish_dropped.clone(),
        );
        r.register(
            "db_errors",
            "Failed heartbeat statements and lost primary sessions",
            m.db_errors.clone(),
        );
        r.register(
            "leader",
            "1 while this writer holds the cluster's lock and writes heartbeats",
            m.leader.clone(),
        );
        r.register(
            "interval_seconds",
            "The configured heartbeat interval (alert rules compare the heartbeat rate with it)",
            m.interval.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Round trip of the heartbeat statement",
            m.commit_latency.clone(),
        );
        m
    }

    /// One cluster's series, resolved once: counting a heartbeat is then an atomic add.
    pub fn for_cluster(&self, cluster: &str, interval: Duration) -> ClusterMetrics {
        let l = labels(&[("cluster", cluster)]);
        self.interval.get_or_create(&l).set(interval.as_secs_f64());
        // One get_or_create per statement: its read guard on the family must be gone before
        // the next one may need the write lock.
        let counter = |f: &Family<Labels, Counter>| -> Counter { f.get_or_create(&l).clone() };
        let leader = self.leader.get_or_create(&l).clone();
        let commit_latency = self.commit_latency.get_or_create(&l).clone();
        ClusterMetrics {
            heartbeats: counter(&self.heartbeats),
            skipped_ticks: counter(&self.skipped_ticks),
            publish_failures: counter(&self.publish_failures),
            publish_dropped: counter(&self.publish_dropped),
            published: counter(&self.published),
            db_errors: counter(&self.db_errors),
            leader,
            commit_latency,
        }
    }
}

/// One cluster's handles into [`WriterMetrics`].
pub struct ClusterMetrics {
    heartbeats: Counter,
    skipped_ticks: Counter,
    publish_failures: Counter,
    publish_dropped: Counter,
    published: Counter,
    db_errors: Counter,
    leader: Gauge,
    commit_latency: Histogram,
}

/// A heartbeat on its way to Kafka, with the metrics of its cluster.
struct Announcement {
    record: HeartbeatSet,
    metrics: Arc<ClusterMetrics>,
}

/// Run until `shutdown`: one task per cluster, one publisher, the metrics endpoint.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.clusters.is_empty() {
        bail!("no [[cluster]] in the config: the writer has nothing to do");
    }
    let writer_id = config.writer.writer_id.clone().unwrap_or_else(instance_id);
    let mut registry = Registry::with_prefix("millilag");
    let metrics = WriterMetrics::new(&mut registry);
    let health = Health::starting();
    let server = bind_and_serve(
        config.writer.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    // Fail at start, with the key to fix, rather than retry forever on a typo.
    for (i, c) in config.clusters.iter().enumerate() {
        preflight(c)
            .await
            .with_context(|| format!("cluster[{i}] ({}): primary {}", c.name, c.primary))?;
    }
    kafka::ensure_topics(&config, &[topics::HEARTBEAT_SET])
        .await
        .context("creating the heartbeat-set topic")?;
    let producer = kafka::producer(&config.kafka, 0).context("creating the Kafka producer")?;
    let (tx, rx) = mpsc::channel(config.writer.publish_queue);
    let topic = config.topic(topics::HEARTBEAT_SET);
    let publisher = tokio::spawn(publish(producer, topic, rx));

    let mut tasks = Vec::new();
    for c in &config.clusters {
        let ctx = ClusterWriter {
            cluster: c.clone(),
            last_written: std::sync::atomic::AtomicI64::new(0),
            interval: config.writer.interval.0,
            create_table: config.writer.create_table,
            gtid_domain_id: config.writer.gtid_domain_id,
            writer_id: writer_id.clone(),
            tx: tx.clone(),
            metrics: Arc::new(metrics.for_cluster(&c.name, config.writer.interval.0)),
        };
        let span = info_span!("writer", cluster = %c.name);
        tasks.push(tokio::spawn(ctx.run(shutdown.clone()).instrument(span)));
    }
    drop(tx);
    health.set_ready();
    info!(writer_id = %writer_id, clusters = config.clusters.len(), interval = %config.writer.interval, "Writer started.");
    for t in tasks {
        let _ = t.await;
    }
    // Every cluster task dropped its sender: the publisher drains, flushes and returns.
    let _ = publisher.await;
    let _ = server.await;
    info!("Writer stopped.");
    Ok(())
}

/// Reach the primary once and check the heartbeat table is usable.
async fn preflight(c: &ClusterConfig) -> anyhow::Result<()> {
    let mut conn = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose()))
        .await
        .context("cannot connect; check the address, user and password (MILLILAG_DB_PASSWORD or password_file)")?;
    let _ = db::dialect(&mut conn, &c.primary.address()).await?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// Hands heartbeats to Kafka without ever blocking the schedule.
async fn publish(producer: FutureProducer, topic: String, mut rx: mpsc::Receiver<Announcement>) {
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

struct ClusterWriter {
    cluster: ClusterConfig,
    /// The last seq this process wrote, kept across sessions: if the primary lost its last
    /// commits in a crash, the row is behind what was announced, and a seq is never reused.
    last_written: std::sync::atomic::AtomicI64,
    interval: Duration,
    create_table: bool,
    gtid_domain_id: u32,
    writer_id: String,
    tx: mpsc::Sender<Announcement>,
    metrics: Arc<ClusterMetrics>,
}

/// A session on the primary, ready to write heartbeats.
struct Session {
    conn: Conn,
    /// The primary's host:port, naming it in records and errors.
    primary: String,
    dialect: Dialect,
    server_id: i64,
    upsert: String,
    after_commit: String,
    lock_name: String,
}

/// Why the leader loop ended.
enum Ended {
    Shutdown,
    Lost(anyhow::Error),
}

/// GTID tag for MySQL 8.3+ tagged GTIDs (our own numbering, like MariaDB's domain).
const MYSQL_GTID_TAG: &str = "millilag";

impl ClusterWriter {
    async fn run(self, mut shutdown: Shutdown) {
        let addr = self.cluster.primary.address();
        let mut backoff = RetryPolicy::RECONNECT.backoff();
        let mut outage_since: Option<Instant> = None;
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let session = tokio::select! {
                s = self.open_session() => s,
                _ = shutdown.wait() => return,
            };
            let mut session = match session {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.db_errors.inc();
                    // One line per outage, not one per attempt.
                    if outage_since.is_none() {
                        let fault = fault(&e);
                        if fault == ErrorDomain::User {
                            warn!(primary = %addr, %fault, error = format!("{e:#}"), "Primary refused the heartbeat session; check the user's privileges and the heartbeat table. Retrying with backoff.");
                        } else {
                            warn!(primary = %addr, %fault, error = format!("{e:#}"), "Primary unreachable; retrying with backoff.");
                        }
                        outage_since = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = shutdown.wait() => return,
                    }
                }
            };
            if let Some(since) = outage_since.take() {
                info!(primary = %addr, down_for = ?since.elapsed(), "Primary reachable again.");
            }
            backoff.reset();
            match self.lead_or_stand_by(&mut session, &mut shutdown).await {
                Ended::Shutdown => {
                    // Release explicitly so a standby takes over now, not when TCP times out.
                    let _ = session
                        .conn
                        .exec_drop("SELECT RELEASE_LOCK(?)", (&session.lock_name,))
                        .await;
                    let _ = session.conn.disconnect().await;
                    self.metrics.leader.set(0);
                    return;
                }
                Ended::Lost(e) => {
                    self.metrics.leader.set(0);
                    self.metrics.db_errors.inc();
                    let fault = fault(&e);
                    if fault == ErrorDomain::User {
                        warn!(primary = %addr, %fault, error = format!("{e:#}"), "Primary refused a heartbeat statement; check the user's privileges and the heartbeat table. Reconnecting.");
                    } else {
                        warn!(primary = %addr, %fault, error = format!("{e:#}"), "Lost the primary session; reconnecting.");
                    }
                    outage_since = Some(Instant::now());
                }
            }
        }
    }

    async fn open_session(&self) -> anyhow::Result<Session> {
        let c = &self.cluster;
        let addr = c.primary.address();
        let mut conn = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose())).await?;
        let dialect = db::dialect(&mut conn, &addr).await?;
        if self.create_table {
            for stmt in db::heartbeat_ddl(&c.database, &c.table)? {
                conn.query_drop(stmt)
                    .await
                    .map_err(db_error(&addr))
                    .context("creating the heartbeat table (needs CREATE on the database, or create_table = false)")?;
            }
        }
        if let Some(sql) = dialect.gtid_domain_sql(self.gtid_domain_id, MYSQL_GTID_TAG) {
            if let Err(e) = conn.query_drop(&sql).await {
                // Heartbeats still work; readers just cannot arm waits before the event.
                warn!(error = %e, statement = %sql, "Cannot give heartbeats their own GTID numbering (MariaDB: needs BINLOG REPLAY or SUPER); readers fall back to waiting after each event.");
            }
        }
        let server_id: i64 = conn
            .query_first("SELECT @@server_id")
            .await
            .map_err(db_error(&addr))?
            .context("@@server_id returned nothing")?;
        let table = db::qualified_table(&c.database, &c.table)?;
        // pt-heartbeat's ts format (UTC, microseconds), computed by the server: one clock.
        let upsert = format!(
            "INSERT INTO {table} (ts, server_id, seq, writer_id) \
             VALUES (DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f'), {server_id}, ?, ?) \
             ON DUPLICATE KEY UPDATE ts = VALUES(ts), seq = VALUES(seq), writer_id = VALUES(writer_id)"
        );
        Ok(Session {
            conn,
            primary: addr,
            after_commit: dialect.after_commit_sql().to_string(),
            dialect,
            server_id,
            upsert,
            lock_name: lock_name(&c.name),
        })
    }

    /// Stand by until the lock is ours, then write heartbeats until shutdown or an error.
    async fn lead_or_stand_by(&self, s: &mut Session, shutdown: &mut Shutdown) -> Ended {
        let mut standby_logged = false;
        let mut retry = tokio::time::interval(self.interval);
        retry.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let got: Result<Option<Option<i64>>, _> = s
                .conn
                .exec_first("SELECT GET_LOCK(?, 0)", (&s.lock_name,))
                .await;
            match got {
                Ok(Some(Some(1))) => break,
                Ok(_) => {
                    if !standby_logged {
                        info!(lock = %s.lock_name, "Another writer holds the lock; standing by.");
                        standby_logged = true;
                    }
                }
                Err(e) => return Ended::Lost(Error::database(&s.primary, e).into()),
            }
            tokio::select! {
                _ = retry.tick() => {}
                _ = shutdown.wait() => return Ended::Shutdown,
            }
        }
        match self.take_over(s).await {
            Ok((seq, epoch)) => self.write_heartbeats(s, seq, epoch, shutdown).await,
            Err(e) => Ended::Lost(e),
        }
    }

    /// Continue the row's numbering; the epoch is the primary-clock time of the takeover, so
    /// it grows across takeovers by any writer.
    async fn take_over(&self, s: &mut Session) -> anyhow::Result<(i64, i64)> {
        let table = db::qualified_table(&self.cluster.database, &self.cluster.table)?;
        let last: Option<i64> = s
            .conn
            .query_first(format!(
                "SELECT CAST(seq AS SIGNED) FROM {table} WHERE server_id = {}",
                s.server_id
            ))
            .await
            .map_err(db_error(&s.primary))?;
        let now: Option<String> = s
            .conn
            .query_first("SELECT UNIX_TIMESTAMP(SYSDATE(6))")
            .await
            .map_err(db_error(&s.primary))?;
        let epoch = now
            .as_deref()
            .and_then(db::unix_text_to_us)
            .unwrap_or_else(now_us);
        let mine = self.last_written.load(std::sync::atomic::Ordering::Relaxed);
        let next = last.unwrap_or(0).max(mine) + 1;
        self.metrics.leader.set(1);
        info!(
            next_seq = next,
            writer_epoch = epoch,
            "Took the lead; writing heartbeats."
        );
        Ok((next, epoch))
    }

    async fn write_heartbeats(
        &self,
        s: &mut Session,
        mut seq: i64,
        epoch: i64,
        shutdown: &mut Shutdown,
    ) -> Ended {
        let start = Instant::now();
        let mut ticker = tokio::time::interval_at(start, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last_index: Option<u64> = None;
        let interval_us = self.interval.as_micros() as i64;
        loop {
            let due = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ended::Shutdown,
                t = ticker.tick() => t,
            };
            // Which tick this is on the start + n*interval grid; the ones in between were
            // skipped because the previous heartbeat ran past them.
            let index = ((due - start).as_nanos() / self.interval.as_nanos().max(1)) as u64;
            if let Some(prev) = last_index {
                let skipped = index.saturating_sub(prev + 1);
                if skipped > 0 {
                    self.metrics.skipped_ticks.inc_by(skipped);
                }
            }
            last_index = Some(index);

            let t0 = Instant::now();
            let result = self.heartbeat(s, seq).await;
            let rtt = t0.elapsed();
            let (gtid, committed_at_us) = match result {
                Ok(v) => v,
                Err(e) => return Ended::Lost(e),
            };
            self.last_written
                .store(seq, std::sync::atomic::Ordering::Relaxed);
            self.metrics.heartbeats.inc();
            self.metrics.commit_latency.observe(rtt.as_secs_f64());
            let record = HeartbeatSet {
                cluster: self.cluster.name.clone(),
                primary: s.primary.clone(),
                server_id: s.server_id,
                writer_id: self.writer_id.clone(),
                writer_epoch: epoch,
                seq,
                committed_at_us,
                gtid,
                binlog_file: None,
                binlog_pos: None,
                interval_us,
                commit_rtt_us: rtt.as_micros() as i64,
            };
            let announcement = Announcement {
                record,
                metrics: self.metrics.clone(),
            };
            if self.tx.try_send(announcement).is_err() {
                self.metrics.publish_dropped.inc();
            }
            seq += 1;
        }
    }

    /// One heartbeat, one round trip: the upsert (autocommit), then its GTID and the primary's
    /// clock right after the commit.
    async fn heartbeat(&self, s: &mut Session, seq: i64) -> anyhow::Result<(Option<String>, i64)> {
        let sql = format!(
            "{}; {}",
            s.upsert.replacen('?', &seq.to_string(), 1).replacen(
                '?',
                &sql_string(&self.writer_id),
                1
            ),
            s.after_commit
        );
        let db_err = db_error(&s.primary);
        let mut result = s.conn.query_iter(sql).await.map_err(db_err)?;
        // First result set: the upsert's OK packet (no rows); then the SELECT.
        let _: Vec<mysql_async::Row> = result.collect().await.map_err(db_err)?;
        let rows: Vec<mysql_async::Row> = result.collect().await.map_err(db_err)?;
        result.drop_result().await.map_err(db_err)?;
        let row = rows
            .into_iter()
            .next()
            .context("the after-commit SELECT returned no row")?;
        let first: Option<String> = row.get(0);
        let ts: Option<String> = row.get(1);
        let uuid: Option<String> = row.get(2);
        let committed_at_us = ts
            .as_deref()
            .and_then(db::unix_text_to_us)
            .context("UNIX_TIMESTAMP(SYSDATE(6)) did not return a time")?;
        let gtid = db::own_gtid(
            &s.dialect,
            first.as_deref(),
            uuid.as_deref(),
            MYSQL_GTID_TAG,
        );
        Ok((gtid, committed_at_us))
    }
}

/// Wraps a driver error with the server it came from, so that [`fault`] can tell a refusal
/// (the user's to fix) from a server that went away.
fn db_error(primary: &str) -> impl Fn(mysql_async::Error) -> Error + Copy + '_ {
    move |e| Error::database(primary, e)
}

/// Whose fault a failed session is, for the log line: a server that answers with an error
/// (privileges, schema) will not be fixed by reconnecting, unlike one that is away.
fn fault(e: &anyhow::Error) -> ErrorDomain {
    e.chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map_or(ErrorDomain::External, Error::domain)
}

/// A SQL string literal for values we generate ourselves (the writer id): quotes and
/// backslashes escaped, so even a strange hostname cannot break the statement.
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// GET_LOCK's limit on a lock name, in characters.
const MAX_LOCK_NAME: usize = 64;
/// How much of a long cluster name stays readable in its lock name, in bytes: with the prefix,
/// a dot and 16 hex digits of hash that is at most 57 bytes, so within the limit whatever the
/// characters.
const LOCK_NAME_CLUSTER_PREFIX: usize = 24;

/// `millilag.writer.<cluster>`, shortened with a hash when longer than GET_LOCK's 64 characters.
pub fn lock_name(cluster: &str) -> String {
    let name = format!("millilag.writer.{cluster}");
    if name.len() <= MAX_LOCK_NAME {
        return name;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher, so every writer of a
    // cluster agrees on the name.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in cluster.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let prefix = prefix_within(cluster, LOCK_NAME_CLUSTER_PREFIX);
    format!("millilag.writer.{prefix}.{h:016x}")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_get_lock() {
        assert_eq!(lock_name("main"), "millilag.writer.main");
        let long = "c".repeat(100);
        let n = lock_name(&long);
        assert!(n.len() <= 64, "{n}");
        assert_ne!(n, lock_name(&"c".repeat(101)));
    }

    #[test]
    fn long_multibyte_cluster_names_are_cut_on_a_character_boundary() {
        // Byte 24 falls inside a character for each of these.
        for long in [
            format!("a{}", "日".repeat(30)),
            format!("ab{}", "🦀".repeat(20)),
            format!("{}é", "x".repeat(23)).repeat(3),
        ] {
            let n = lock_name(&long);
            assert!(n.chars().count() <= MAX_LOCK_NAME, "{n}");
            let kept = n
                .strip_prefix("millilag.writer.")
                .and_then(|r| r.rsplit_once('.'))
                .map(|(kept, _hash)| kept)
                .unwrap();
            assert!(!kept.is_empty() && long.starts_with(kept), "{n}");
            assert_ne!(n, lock_name(&format!("{long}x")));
        }
        assert_eq!(prefix_within("aé", 2), "a");
        assert_eq!(prefix_within("ab", 24), "ab");
    }

    #[test]
    fn writer_ids_are_quoted() {
        assert_eq!(sql_string("a'b\\c"), "'a''b\\\\c'");
    }
}
