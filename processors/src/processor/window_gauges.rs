//! Each replica's last closed window per length, as Prometheus gauges, so the windows'
//! quantiles reach /metrics and not only the sinks:
//!
//! - `millilag_processor_window_delay_seconds{cluster,replica,window,stat}`, stat `min`, `p50`,
//!   `p90`, `p99`, `max`; absent while the last window carries no delay (a writer outage: no
//!   heartbeat to time), rather than a stale figure;
//! - `millilag_processor_window_heartbeats{cluster,replica,window,kind}`, kind `count`,
//!   `missing`, `timeouts`, `replication_stopped`, `unreachable`, `skipped`, `upper_bounds`,
//!   `duplicates`;
//! - `millilag_processor_window_end_timestamp_seconds{cluster,replica,window}`: which window
//!   the other two describe (a scrape can tell a fresh window from an old one).
//!
//! Only the processor that owns a replica's partition shows it: a replica handed to another
//! processor, or forgotten after hours of silence, loses its series here.

use super::metrics::Labels;
use millilag_core::events::DelayWindow;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;

type Seconds = Gauge<f64, AtomicU64>;

const STATS: [&str; 5] = ["min", "p50", "p90", "p99", "max"];
const KINDS: [&str; 8] = [
    "count",
    "missing",
    "timeouts",
    "replication_stopped",
    "unreachable",
    "skipped",
    "upper_bounds",
    "duplicates",
];

#[derive(Clone, Default)]
pub struct WindowGauges {
    delay: Family<Labels, Seconds>,
    heartbeats: Family<Labels, Gauge>,
    end: Family<Labels, Seconds>,
    /// The series shown, per cluster, replica and window length: set through these handles,
    /// a closed window costs no label sets built and hashed (14 per window, 4 strings each, were
    /// ~8% of the processor's CPU while it closed the windows of 1,000 replicas), and a replica
    /// that goes has its series removed.
    shown: HashMap<String, HashMap<String, BTreeMap<String, Shown>>>,
}

/// One replica's series for one window length.
#[derive(Clone)]
struct Shown {
    /// None while the last window carried no delay (the series is removed).
    delay: [Option<Seconds>; STATS.len()],
    heartbeats: [Gauge; KINDS.len()],
    end: Seconds,
}

impl WindowGauges {
    /// Register under `registry` (the processor's, prefix `millilag_processor_`).
    pub fn register(registry: &mut Registry) -> WindowGauges {
        let g = WindowGauges::default();
        registry.register(
            "window_delay_seconds",
            "Delay statistics of each replica's last closed window, per window length (absent when that window had no delay)",
            g.delay.clone(),
        );
        registry.register(
            "window_heartbeats",
            "Heartbeats of each replica's last closed window, per window length and kind (count measured, missing, by status)",
            g.heartbeats.clone(),
        );
        registry.register(
            "window_end_timestamp_seconds",
            "End of the last closed window the window_ gauges describe, per replica and window length",
            g.end.clone(),
        );
        g
    }

    /// `w`, a closed window of length `label` (e.g. "1s"), is now its replica's newest.
    pub fn show(&mut self, w: &DelayWindow, label: &str) {
        let base = |extra| series(&w.cluster, &w.replica, label, extra);
        let lengths = match self
            .shown
            .get_mut(&w.cluster)
            .and_then(|r| r.get_mut(&w.replica))
        {
            Some(l) => l,
            None => self
                .shown
                .entry(w.cluster.clone())
                .or_default()
                .entry(w.replica.clone())
                .or_default(),
        };
        let shown = match lengths.get_mut(label) {
            Some(s) => s,
            None => lengths.entry(label.to_string()).or_insert_with(|| Shown {
                delay: Default::default(),
                heartbeats: KINDS.map(|kind| {
                    self.heartbeats
                        .get_or_create(&base(Some(("kind", kind))))
                        .clone()
                }),
                end: self.end.get_or_create(&base(None)).clone(),
            }),
        };
        let stats = [w.min_us, w.p50_us, w.p90_us, w.p99_us, w.max_us];
        for ((stat, value), gauge) in STATS.iter().zip(stats).zip(&mut shown.delay) {
            match (value, gauge.as_ref()) {
                (Some(us), Some(g)) => {
                    g.set(us as f64 / 1e6);
                }
                (Some(us), None) => {
                    let g = self
                        .delay
                        .get_or_create(&base(Some(("stat", stat))))
                        .clone();
                    g.set(us as f64 / 1e6);
                    *gauge = Some(g);
                }
                (None, Some(_)) => {
                    self.delay.remove(&base(Some(("stat", stat))));
                    *gauge = None;
                }
                (None, None) => {}
            }
        }
        let kinds = [
            w.count,
            w.missing,
            w.timeouts,
            w.replication_stopped,
            w.unreachable,
            w.skipped,
            w.upper_bounds,
            w.duplicates,
        ];
        for (gauge, n) in shown.heartbeats.iter().zip(kinds) {
            gauge.set(n);
        }
        let end_us = w.window_start_us.saturating_add(w.window_us);
        shown.end.set(end_us as f64 / 1e6);
    }

    /// Remove every series of `cluster`/`replica` (its partition moved away, or it was pruned).
    pub fn forget(&mut self, cluster: &str, replica: &str) {
        let Some(replicas) = self.shown.get_mut(cluster) else {
            return;
        };
        let Some(lengths) = replicas.remove(replica) else {
            return;
        };
        if replicas.is_empty() {
            self.shown.remove(cluster);
        }
        for label in lengths.keys() {
            let base = |extra| series(cluster, replica, label, extra);
            for stat in STATS {
                self.delay.remove(&base(Some(("stat", stat))));
            }
            for kind in KINDS {
                self.heartbeats.remove(&base(Some(("kind", kind))));
            }
            self.end.remove(&base(None));
        }
    }
}

/// The labels of one series: cluster, replica, window length, and the stat or kind if any.
fn series(
    cluster: &str,
    replica: &str,
    window: &str,
    extra: Option<(&'static str, &str)>,
) -> Labels {
    let mut l: Labels = vec![
        ("cluster", cluster.to_string()),
        ("replica", replica.to_string()),
        ("window", window.to_string()),
    ];
    l.extend(extra.map(|(k, v)| (k, v.to_string())));
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn window(replica: &str, max_us: Option<i64>) -> DelayWindow {
        DelayWindow {
            cluster: "main".into(),
            replica: replica.into(),
            window_start_us: 10_000_000,
            window_us: 1_000_000,
            count: 98,
            missing: 2,
            min_us: max_us.map(|_| 100),
            p50_us: max_us.map(|_| 250),
            p90_us: max_us.map(|_| 400),
            p99_us: max_us.map(|_| 900),
            max_us,
            timeouts: 1,
            unreachable: 0,
            replication_stopped: 0,
            skipped: 0,
            upper_bounds: 3,
            duplicates: 0,
        }
    }

    fn scrape(r: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, r).unwrap();
        text
    }

    #[test]
    fn the_last_window_is_shown_a_window_without_delays_hides_stale_figures_and_forget_removes_all()
    {
        let mut registry = Registry::with_prefix("millilag_processor");
        let mut g = WindowGauges::register(&mut registry);
        g.show(&window("db2", Some(1_500)), "1s");
        g.show(&window("db3", Some(2_000)), "1s");
        let text = scrape(&registry);
        let line = |series: &str| {
            text.lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let db2 = r#"{cluster="main",replica="db2",window="1s""#;
        assert_eq!(
            line(&format!(
                "millilag_processor_window_delay_seconds{db2},stat=\"max\"}}"
            )),
            0.0015
        );
        assert_eq!(
            line(&format!(
                "millilag_processor_window_delay_seconds{db2},stat=\"p50\"}}"
            )),
            0.00025
        );
        assert_eq!(
            line(&format!(
                "millilag_processor_window_heartbeats{db2},kind=\"missing\"}}"
            )),
            2.0
        );
        assert_eq!(
            line(&format!(
                "millilag_processor_window_end_timestamp_seconds{db2}}}"
            )),
            11.0
        );

        // A window with no delay at all: the delay series go, the counts stay.
        g.show(&window("db2", None), "1s");
        let text = scrape(&registry);
        assert!(!text.contains(&format!(
            "millilag_processor_window_delay_seconds{db2},stat"
        )));
        assert!(text.contains(&format!(
            "millilag_processor_window_heartbeats{db2},kind=\"count\"}} 98"
        )));

        // Delays again: the delay series come back.
        g.show(&window("db2", Some(3_000)), "1s");
        assert!(scrape(&registry).contains(&format!(
            "millilag_processor_window_delay_seconds{db2},stat=\"max\"}} 0.003"
        )));

        g.forget("main", "db2");
        let text = scrape(&registry);
        assert!(!text.contains("replica=\"db2\""), "{text}");
        assert!(text.contains(r#"replica="db3""#), "another replica is kept");

        // Shown again after it was forgotten (its partition came back): every series is back.
        g.show(&window("db2", Some(1_500)), "1s");
        let text = scrape(&registry);
        for series in [
            format!("millilag_processor_window_delay_seconds{db2},stat=\"max\"}} 0.0015"),
            format!("millilag_processor_window_heartbeats{db2},kind=\"missing\"}} 2"),
            format!("millilag_processor_window_end_timestamp_seconds{db2}}} 11"),
        ] {
            assert!(text.contains(&series), "{series} missing in\n{text}");
        }
    }
}
