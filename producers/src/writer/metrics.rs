//! The writer's metrics: one family per quantity, labelled by cluster, each cluster's series
//! resolved once so that counting a heartbeat is an atomic add.

use millilag_core::metrics::{labels, Labels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
    pub fn for_cluster(&self, cluster: &str, interval: std::time::Duration) -> ClusterMetrics {
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
    pub(super) heartbeats: Counter,
    pub(super) skipped_ticks: Counter,
    pub(super) publish_failures: Counter,
    pub(super) publish_dropped: Counter,
    pub(super) published: Counter,
    pub(super) db_errors: Counter,
    pub(super) leader: Gauge,
    pub(super) commit_latency: Histogram,
}
