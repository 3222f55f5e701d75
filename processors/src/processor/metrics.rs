//! The processor's metrics, served on `processor.listen` at /metrics.

use super::window_gauges::WindowGauges;
use crate::consumer::DeadLetterMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use millilag_core::metrics::{labels, Labels};

#[derive(Clone)]
pub struct Metrics {
    pub records: Counter,
    pub lag_samples: Counter,
    pub clock_skew_rejects: Counter,
    pub name_rejects: Counter,
    pub decode_failures: Counter,
    pub dead_letter: DeadLetterMetrics,
    pub duplicates: Counter,
    pub late: Family<Labels, Counter>,
    pub replayed: Counter,
    pub windows_closed: Family<Labels, Counter>,
    pub open_windows: Gauge,
    pub pending_windows: Gauge,
    pub paused: Gauge,
    pub assigned_partitions: Gauge,
    sink_points: Family<Labels, Counter>,
    sink_failures: Family<Labels, Counter>,
    sink_backlog: Family<Labels, Gauge>,
    sink_rejected: Family<Labels, Counter>,
    pub alert_firing: Family<Labels, Gauge>,
    pub alert_transitions: Family<Labels, Counter>,
    pub webhook_sent: Family<Labels, Counter>,
    pub webhook_failures: Family<Labels, Counter>,
    pub webhook_dropped: Family<Labels, Counter>,
    /// Each replica's last closed window per length (only the dispatch's copy shows them).
    pub window_gauges: WindowGauges,
}

/// One sink's counters.
#[derive(Clone)]
pub struct SinkMetrics {
    pub points: Counter,
    pub failures: Counter,
    pub backlog: Gauge,
    /// Windows the sink refused for good (dead-lettered), per status: see [`Self::rejected`].
    rejected: Family<Labels, Counter>,
    sink: String,
}

impl SinkMetrics {
    /// The counter of windows refused with `status` (an HTTP status, or the error's domain
    /// when the refusal has none).
    pub fn rejected(&self, status: &str) -> Counter {
        self.rejected
            .get_or_create(&labels(&[("sink", &self.sink), ("status", status)]))
            .clone()
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let mut m = Metrics {
            records: Counter::default(),
            lag_samples: Counter::default(),
            clock_skew_rejects: Counter::default(),
            name_rejects: Counter::default(),
            decode_failures: Counter::default(),
            dead_letter: DeadLetterMetrics::default(),
            duplicates: Counter::default(),
            late: Family::default(),
            replayed: Counter::default(),
            windows_closed: Family::default(),
            open_windows: Gauge::default(),
            pending_windows: Gauge::default(),
            paused: Gauge::default(),
            assigned_partitions: Gauge::default(),
            sink_points: Family::default(),
            sink_failures: Family::default(),
            sink_backlog: Family::default(),
            sink_rejected: Family::default(),
            alert_firing: Family::default(),
            alert_transitions: Family::default(),
            webhook_sent: Family::default(),
            webhook_failures: Family::default(),
            webhook_dropped: Family::default(),
            window_gauges: WindowGauges::default(),
        };
        let r = registry.sub_registry_with_prefix("processor");
        m.dead_letter = DeadLetterMetrics::register(r);
        m.window_gauges = WindowGauges::register(r);
        r.register(
            "records",
            "replica-delay records consumed",
            m.records.clone(),
        );
        r.register(
            "lag_samples",
            "Live-lag samples (status pending) consumed from lagging replicas",
            m.lag_samples.clone(),
        );
        r.register(
            "clock_skew_rejects",
            "Records sent to dead-letter because their primary's clock is off (processor.max_clock_skew) or they are older than processor.max_event_age",
            m.clock_skew_rejects.clone(),
        );
        r.register(
            "name_rejects",
            "Records sent to dead-letter because their cluster or replica name cannot become a point (empty, a control character, a backslash)",
            m.name_rejects.clone(),
        );
        r.register(
            "decode_failures",
            "Records that did not decode (sent to dead-letter)",
            m.decode_failures.clone(),
        );
        r.register(
            "duplicates",
            "Records dropped as a repeat of a (cluster, replica, seq) already counted",
            m.duplicates.clone(),
        );
        r.register(
            "late_records",
            "Records whose window had already closed, per window length",
            m.late.clone(),
        );
        r.register(
            "replayed_records",
            "Records skipped for a window length because that window was flushed before a restart",
            m.replayed.clone(),
        );
        r.register(
            "windows_closed",
            "Windows closed, per window length",
            m.windows_closed.clone(),
        );
        r.register("open_windows", "Windows open now", m.open_windows.clone());
        r.register(
            "pending_windows",
            "Closed windows not yet accepted by every sink",
            m.pending_windows.clone(),
        );
        r.register(
            "paused",
            "1 while consumption is paused because sinks are behind",
            m.paused.clone(),
        );
        r.register(
            "assigned_partitions",
            "replica-delay partitions this processor owns in its consumer group",
            m.assigned_partitions.clone(),
        );
        r.register(
            "sink_points",
            "Windows a sink accepted",
            m.sink_points.clone(),
        );
        r.register(
            "sink_failures",
            "Failed sink writes that are retried (connection errors, timeouts, 5xx, 408, 429)",
            m.sink_failures.clone(),
        );
        r.register(
            "sink_rejected",
            "Windows a sink refused for good (an HTTP 4xx other than 408/429), sent to dead-letter, per sink and status",
            m.sink_rejected.clone(),
        );
        r.register(
            "sink_backlog",
            "Windows waiting for a sink",
            m.sink_backlog.clone(),
        );
        r.register(
            "alert_firing",
            "Replicas for which a rule is firing",
            m.alert_firing.clone(),
        );
        r.register(
            "alert_transitions",
            "Alert state changes, per rule and state",
            m.alert_transitions.clone(),
        );
        r.register(
            "webhook_sent",
            "Webhook notifications delivered",
            m.webhook_sent.clone(),
        );
        r.register(
            "webhook_failures",
            "Failed webhook attempts (retried until give_up_after)",
            m.webhook_failures.clone(),
        );
        r.register(
            "webhook_dropped",
            "Webhook notifications given up on or dropped because the queue was full",
            m.webhook_dropped.clone(),
        );
        m
    }

    pub fn sink(&self, name: &str) -> SinkMetrics {
        let l = vec![("sink", name.to_string())];
        SinkMetrics {
            points: self.sink_points.get_or_create(&l).clone(),
            failures: self.sink_failures.get_or_create(&l).clone(),
            backlog: self.sink_backlog.get_or_create(&l).clone(),
            rejected: self.sink_rejected.clone(),
            sink: name.to_string(),
        }
    }
}
