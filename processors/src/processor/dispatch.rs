//! Closed windows leave the run loop here, as one batch per dispatch:
//!
//! ```text
//! closed windows ─► alert rules ─► transitions ─► AlertPublisher (alert, alert-state, webhooks)
//!        ├────────► every sink task (the same Arc'd batch) ─► ack ─┐
//!        ├────────► every statsd sink (best effort: no ack, never waits) │
//!        └────────► flush marks, newest window per (cluster, replica, length)
//!                        └─ all sinks acked ─► state writer (processor-state) ─► ack
//! ```
//!
//! The batch is registered with the [`OffsetTracker`] with the offsets its windows hold, so no
//! offset is stored past a window before every sink has it and its flush is recorded.

use super::alerts::{AlertEngine, AlertPublisher, StaleRules};
use super::metrics::{labels, Metrics};
use super::offsets::OffsetTracker;
use super::sinks::statsd::StatsdHandle;
use super::sinks::{Batch, SinkHandle};
use super::state::{Flushed, MarksSender};
use super::window::{Closed, Hold};
use millilag_core::events::{Alert, AlertState};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{error, info, warn};

/// Where closed windows go.
pub struct Dispatch<'a> {
    pub engine: AlertEngine,
    /// Built-in rules on silence (evaluated on the wall clock by the run loop).
    pub stale: StaleRules,
    pub sinks: &'a [SinkHandle],
    /// Best-effort sinks: offered every batch, never waited for, never holding offsets.
    pub statsd: &'a [StatsdHandle],
    pub state_tx: &'a MarksSender,
    pub alerts: &'a AlertPublisher,
    pub metrics: Metrics,
}

impl Dispatch<'_> {
    /// Whether every sink can queue another batch.
    pub fn sinks_have_room(&self) -> bool {
        self.sinks.iter().all(|s| s.has_room() || s.stopped())
    }

    /// Hand `closed` (emptied) to the alert rules and every sink as one batch. Only called
    /// when [`Dispatch::sinks_have_room`].
    pub fn dispatch(&mut self, closed: &mut Vec<Closed>, tracker: &mut OffsetTracker) {
        if closed.is_empty() {
            return;
        }
        let mut hold = Hold::default();
        let marks: Arc<[Flushed]> = flush_marks(closed).into();
        let mut windows = Vec::with_capacity(closed.len());
        for c in closed.drain(..) {
            self.metrics
                .windows_closed
                .get_or_create(&labels(&[("window", &c.label)]))
                .inc();
            self.metrics.window_gauges.show(&c.window, &c.label);
            for a in self.engine.on_window(&c.window) {
                self.transition(a);
            }
            hold.merge(&c.hold);
            windows.push(c.window);
        }
        let n = windows.len();
        let windows: Arc<[_]> = windows.into();
        let id = tracker.push(n, marks.clone(), hold, self.sinks.len());
        for s in self.sinks {
            if !s.send(Batch {
                id,
                windows: windows.clone(),
            }) {
                error!(sink = %s.name, "Sink task is gone.");
            }
        }
        for s in self.statsd {
            s.send(&windows);
        }
        if self.sinks.is_empty() {
            let _ = self.state_tx.send((id, marks));
        }
    }

    /// A sink accepted batch `id`; once every sink has, its flush marks are written.
    pub fn sink_acked(&self, id: u64, tracker: &mut OffsetTracker) {
        if let Some(marks) = tracker.sink_acked(id) {
            let _ = self.state_tx.send((id, marks));
        }
    }

    /// Continue an incident announced by another processor or an earlier run: its rule
    /// resolves it (never announces it again) and Alertmanager webhooks re-post it.
    pub fn adopt(&mut self, a: Alert) {
        if StaleRules::is_ours(&a.rule) {
            self.stale.adopt(a.clone());
        } else if self.engine.restore([a.clone()]).is_empty() {
            return; // a rule no longer configured
        }
        self.metrics
            .alert_firing
            .get_or_create(&labels(&[("rule", &a.rule)]))
            .inc();
        if !self.alerts.adopt(a) {
            warn!("Alert queue full; an adopted incident is not re-posted.");
        }
    }

    /// Hand `cluster`/`replica`'s incidents (`""`: the cluster-wide ones) to their new owner.
    pub fn forget(&mut self, cluster: &str, replica: &str) {
        if !replica.is_empty() {
            self.metrics.window_gauges.forget(cluster, replica);
        }
        let mut gone = self.engine.forget(cluster, replica);
        gone.extend(self.stale.forget(cluster, replica));
        for (rule, fp) in gone {
            self.metrics
                .alert_firing
                .get_or_create(&labels(&[("rule", &rule)]))
                .dec();
            if !self.alerts.forget(fp) {
                warn!("Alert queue full; a handed-over incident is still re-posted from here.");
            }
        }
    }

    /// The fingerprints of the incidents owned here.
    pub fn owned_incidents(&self) -> std::collections::BTreeSet<String> {
        self.engine
            .firing()
            .chain(self.stale.owned())
            .cloned()
            .collect()
    }

    pub fn transition(&self, a: Alert) {
        info!(rule = %a.rule, cluster = %a.cluster, replica = %a.replica, state = a.state.as_str(), value = a.value, "Alert transition.");
        {
            let firing = self
                .metrics
                .alert_firing
                .get_or_create(&labels(&[("rule", &a.rule)]));
            match a.state {
                AlertState::Firing => firing.inc(),
                AlertState::Resolved => firing.dec(),
            };
        }
        self.metrics
            .alert_transitions
            .get_or_create(&labels(&[("rule", &a.rule), ("state", a.state.as_str())]))
            .inc();
        if !self.alerts.publish(a) {
            warn!("Alert queue full; transition not published.");
        }
    }
}

/// The processor-state records for a batch: per (cluster, replica, length) its newest window.
fn flush_marks(closed: &[Closed]) -> Vec<Flushed> {
    let mut marks: HashMap<(&str, &str, i64), Flushed> = HashMap::new();
    for c in closed {
        let w = &c.window;
        let newer = marks
            .get(&(w.cluster.as_str(), w.replica.as_str(), w.window_us))
            .is_none_or(|m| m.window_start_us < w.window_start_us);
        if newer {
            marks.insert(
                (&w.cluster, &w.replica, w.window_us),
                Flushed {
                    cluster: w.cluster.clone(),
                    replica: w.replica.clone(),
                    window_us: w.window_us,
                    window_start_us: w.window_start_us,
                    last_seq: c.last_seq,
                },
            );
        }
    }
    marks.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::events::DelayWindow;

    fn closed(replica: &str, window_us: i64, start: i64, last_seq: i64) -> Closed {
        Closed {
            window: DelayWindow {
                cluster: "main".into(),
                replica: replica.into(),
                window_start_us: start,
                window_us,
                count: 1,
                missing: 0,
                min_us: Some(1),
                p50_us: Some(1),
                p90_us: Some(1),
                p99_us: Some(1),
                max_us: Some(1),
                timeouts: 0,
                unreachable: 0,
                replication_stopped: 0,
                skipped: 0,
                upper_bounds: 0,
                duplicates: 0,
            },
            hold: Hold::default(),
            last_seq: Some(last_seq),
            label: "1s".into(),
        }
    }

    #[test]
    fn one_mark_per_replica_and_length_with_the_newest_window() {
        let batch = [
            closed("r1", 1_000, 2_000, 20),
            closed("r1", 1_000, 1_000, 10),
            closed("r1", 10_000, 0, 20),
            closed("r2", 1_000, 1_000, 11),
        ];
        let mut marks: Vec<_> = flush_marks(&batch)
            .into_iter()
            .map(|f| (f.replica, f.window_us, f.window_start_us, f.last_seq))
            .collect();
        marks.sort();
        assert_eq!(
            marks,
            vec![
                ("r1".to_string(), 1_000, 2_000, Some(20)),
                ("r1".to_string(), 10_000, 0, Some(20)),
                ("r2".to_string(), 1_000, 1_000, Some(11)),
            ]
        );
    }
}
