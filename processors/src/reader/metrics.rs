//! The reader's metrics: per-replica handles resolved once, so the hot path only adds to
//! atomics.

use crate::consumer::DeadLetterMetrics;
use millilag_core::events::{MeasureStatus, ReplicaDelay};
use millilag_core::metrics::Labels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The reader's metrics.
#[derive(Clone)]
pub struct ReaderMetrics {
    pub(super) measurements: Family<Labels, Counter>,
    pub(super) delay: Family<Labels, Histogram>,
    pub(super) queries: Family<Labels, Counter>,
    pub(super) upper_bounds: Family<Labels, Counter>,
    pub(super) events: Counter,
    pub(super) dead_letters: Counter,
    pub(super) dead_letter: DeadLetterMetrics,
    pub(super) publish_retries: Counter,
    pub(super) publish_queue: Gauge,
    pub(super) paused: Gauge,
    pub(super) consumer_lag: Family<Labels, Gauge>,
    pub(super) replicas: Family<Labels, Gauge>,
    pub(super) lag: Family<Labels, Gauge<f64, AtomicU64>>,
    pub(super) clock_uncertainty: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl ReaderMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let mut m = ReaderMetrics {
            measurements: Family::default(),
            delay: Family::new_with_constructor(|| {
                Histogram::new(millilag_core::metrics::delay_buckets())
            }),
            queries: Family::default(),
            upper_bounds: Family::default(),
            events: Counter::default(),
            dead_letters: Counter::default(),
            dead_letter: DeadLetterMetrics::default(),
            publish_retries: Counter::default(),
            publish_queue: Gauge::default(),
            paused: Gauge::default(),
            consumer_lag: Family::default(),
            replicas: Family::default(),
            lag: Family::default(),
            clock_uncertainty: Family::default(),
        };
        registry.register(
            "replica_lag_seconds",
            "Live lag: the age (primary clock) of the oldest announced heartbeat the replica does not show yet; 0 when it shows them all. Fresh to 100 ms while a heartbeat is awaited.",
            m.lag.clone(),
        );
        let r = registry.sub_registry_with_prefix("reader");
        m.dead_letter = DeadLetterMetrics::register(r);
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
            "publish_queue",
            "replica-delay records waiting for Kafka's acknowledgement (at most reader.max_pending_records)",
            m.publish_queue.clone(),
        );
        r.register(
            "paused",
            "1 while heartbeat-set consumption is paused because publishes are behind",
            m.paused.clone(),
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
        r.register(
            "clock_uncertainty_seconds",
            "How far the local clock's offset to each cluster's primary may be off: half the best sample's round trip plus drift since (100 ppm); 1 while never sampled (offset assumed 0)",
            m.clock_uncertainty.clone(),
        );
        m
    }

    /// The handle for `cluster`'s clock-offset bound.
    pub fn clock_uncertainty(&self, cluster: &str) -> Gauge<f64, AtomicU64> {
        self.clock_uncertainty
            .get_or_create(&vec![("cluster", cluster.to_string())])
            .clone()
    }

    pub fn measured(&self, r: &ReplicaDelay) {
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
    pub(super) delay: Histogram,
    pub(super) upper_bounds: Counter,
    pub(super) lag: Gauge<f64, AtomicU64>,
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
    /// Drop a replica's series (discovery lost it): a churn of replica names (pod IPs) must not
    /// grow /metrics without bound, nor leave a dead replica's last lag on dashboards.
    pub fn forget_replica(&self, cluster: &str, replica: &str) {
        let base: Labels = vec![
            ("cluster", cluster.to_string()),
            ("replica", replica.to_string()),
        ];
        let with = |k: &'static str, v: &str| {
            let mut l = base.clone();
            l.push((k, v.to_string()));
            l
        };
        for kind in ["gtid_wait", "poll", "status"] {
            self.queries.remove(&with("kind", kind));
        }
        for s in MeasureStatus::ALL {
            self.measurements.remove(&with("status", s.as_str()));
        }
        self.delay.remove(&base);
        self.upper_bounds.remove(&base);
        self.lag.remove(&base);
    }

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
