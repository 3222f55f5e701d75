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
//! new leader continues from the largest seq in the table and announces a larger writer_epoch.
//! The lock is per server, so a writer also writes only to a writable server (`@@read_only`
//! off) and, given several candidate URLs for the primary, follows the writable one across a
//! switchover ([`session`]); seq continues there, as the old primary's row replicated.
//!
//! Clusters are independent: one whose primary is unreachable, read-only or misconfigured is
//! retried with backoff, said once in the log with the fix ([`trouble`]), and shown by /readyz,
//! while the others keep writing. Every database call is bounded by the cluster's timeouts.
//!
//! Publishing never blocks the schedule: records go through a bounded queue to a publisher task
//! (idempotent producer, acks=all); when the queue is full the record is dropped and counted.
//! Each cluster's metric handles are resolved once at start and travel with its records, so a
//! heartbeat never builds a label set.

mod lead;
mod lock;
mod metrics;
mod publish;
mod session;
mod trouble;

pub use lock::lock_name;
pub use metrics::{ClusterMetrics, WriterMetrics};

use anyhow::{bail, Context};
use lead::Ended;
use millilag_core::config::{ClusterConfig, Config, MAX_WRITER_ID};
use millilag_core::db;
use millilag_core::events::HeartbeatSet;
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::Shutdown;
use millilag_core::telemetry::instance_id;
use mysql_async::prelude::*;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, info_span, Instrument};
use trouble::Trouble;

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
    // The default (hostname-pid) is cut to the column's length; a configured one was checked.
    let writer_id = config
        .writer
        .writer_id
        .clone()
        .unwrap_or_else(|| instance_id().chars().take(MAX_WRITER_ID).collect());
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

    // Not ready until every cluster writes or stands by; each cluster retries on its own, so
    // one unreachable primary at start does not hold up the others.
    let readiness = Readiness::new(
        health.clone(),
        config.clusters.iter().map(|c| c.name.as_str()),
    );
    kafka::ensure_topics(&config, &[topics::HEARTBEAT_SET])
        .await
        .context("creating the heartbeat-set topic")?;
    let producer = kafka::producer(&config.kafka, 0).context("creating the Kafka producer")?;
    let (tx, rx) = mpsc::channel(config.writer.publish_queue);
    let topic = config.topic(topics::HEARTBEAT_SET);
    let publisher = tokio::spawn(publish::publish(producer, topic, rx));

    let mut tasks = Vec::new();
    for c in &config.clusters {
        let ctx = ClusterWriter {
            cluster: c.clone(),
            last_written: AtomicI64::new(0),
            gtid_domain_warned: AtomicBool::new(false),
            interval: config.writer.interval.0,
            create_table: config.writer.create_table,
            gtid_domain_id: config.writer.gtid_domain_id,
            writer_id: writer_id.clone(),
            tx: tx.clone(),
            metrics: Arc::new(metrics.for_cluster(&c.name, config.writer.interval.0)),
        };
        let span = info_span!("writer", cluster = %c.name);
        tasks.push(tokio::spawn(
            ctx.run(shutdown.clone(), readiness.clone())
                .instrument(span),
        ));
    }
    drop(tx);
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

/// Readiness per cluster, folded into the service's [`Health`]: ready when every cluster writes
/// heartbeats or stands by behind another writer; otherwise /readyz names the clusters and why.
#[derive(Clone)]
pub(crate) struct Readiness {
    health: Health,
    /// cluster -> why it is not ready.
    not_ready: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Readiness {
    pub(crate) fn new<'a>(health: Health, clusters: impl IntoIterator<Item = &'a str>) -> Self {
        let r = Readiness {
            health,
            not_ready: Arc::new(Mutex::new(
                clusters
                    .into_iter()
                    .map(|c| (c.to_string(), "connecting".to_string()))
                    .collect(),
            )),
        };
        r.publish(&r.not_ready.lock().unwrap_or_else(|p| p.into_inner()));
        r
    }

    /// `why` is None when the cluster is fine.
    pub(crate) fn set(&self, cluster: &str, why: Option<String>) {
        let mut m = self.not_ready.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match why {
            Some(w) => m.insert(cluster.to_string(), w.clone()).as_ref() != Some(&w),
            None => m.remove(cluster).is_some(),
        };
        if changed {
            self.publish(&m);
        }
    }

    fn publish(&self, m: &BTreeMap<String, String>) {
        if m.is_empty() {
            self.health.set_ready();
        } else {
            let why: Vec<String> = m.iter().map(|(c, w)| format!("cluster {c}: {w}")).collect();
            self.health.set_not_ready(why.join("; "));
        }
    }
}

struct ClusterWriter {
    cluster: ClusterConfig,
    /// The last seq this process wrote, kept across sessions: if the primary lost its last
    /// commits in a crash, the row is behind what was announced, and a seq is never reused.
    last_written: AtomicI64,
    /// The GTID-domain warning is said once per process, not once per session.
    gtid_domain_warned: AtomicBool,
    interval: Duration,
    create_table: bool,
    gtid_domain_id: u32,
    writer_id: String,
    tx: mpsc::Sender<Announcement>,
    metrics: Arc<ClusterMetrics>,
}

/// GTID tag for MySQL 8.3+ tagged GTIDs (our own numbering, like MariaDB's domain).
const MYSQL_GTID_TAG: &str = "millilag";

impl ClusterWriter {
    /// Open a session on the writable candidate, lead or stand by, and after any failure back
    /// off and start over, until shutdown.
    async fn run(self, mut shutdown: Shutdown, readiness: Readiness) {
        let mut status = trouble::Status::new(&self.cluster.name, readiness, self.metrics.clone());
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let opened = tokio::select! {
                s = self.open_session() => s,
                _ = shutdown.wait() => return,
            };
            let troubles = match opened {
                Ok(mut session) => {
                    let ended = self
                        .lead_or_stand_by(&mut session, &mut shutdown, &mut status)
                        .await;
                    self.metrics.leader.set(0);
                    match ended {
                        Ended::Shutdown => {
                            // Release explicitly so a standby takes over now, not when the
                            // server notices the session is gone.
                            let released = session
                                .conn
                                .exec_drop("SELECT RELEASE_LOCK(?)", (&session.lock_name,));
                            let _ = tokio::time::timeout(session.timeouts.query, released).await;
                            db::close(session.conn).await;
                            return;
                        }
                        Ended::Lost(t) => {
                            db::close(session.conn).await;
                            vec![t]
                        }
                    }
                }
                Err(troubles) => troubles,
            };
            let was_healthy = !status.in_trouble();
            let mut delay = status.failed(&troubles);
            if let [Trouble::ReadOnly { .. }] = troubles.as_slice() {
                if self.cluster.primaries.len() > 1 && was_healthy {
                    // Our primary was just demoted: the promoted one may already be writable,
                    // so look once right away (a single retry per lost lead, never a loop).
                    delay = self.interval;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}
