//! Alert rules over closed windows, per (rule, cluster, replica), in event time.
//!
//! A rule reads the closed windows of its `window` length. Inactive → pending when the
//! condition holds; pending → firing once it has held from the start of the first window to
//! the end of the latest for at least `for` (so `for = 30s` over 10 s windows fires on the
//! third window in a row; `for = 0` on the first). A window that is not adjacent to the
//! previous one restarts the pending time. Firing → resolved once the condition (with
//! `hysteresis`) has not held for `resolve_for` (default: one window).
//!
//! Only firing and resolved are transitions the outside sees: each becomes an [`Alert`] with a
//! fingerprint (stable hash of rule, cluster, replica). The latest per fingerprint is kept in
//! the compacted `alert-state` topic and [`AlertEngine::restore`]d at start, so a restarted
//! processor continues an incident instead of announcing it again.
//!
//! The engine is pure (windows in, transitions out); [`publisher`] carries transitions to
//! Kafka and the [`webhook`]s.

pub mod incidents;
pub mod publisher;
pub mod stale;
pub mod webhook;

pub use incidents::Dormant;
pub use publisher::AlertPublisher;
pub use stale::StaleRules;

use millilag_core::config::{AlertCondition, AlertMetric, AlertRuleConfig};
use millilag_core::events::{Alert, AlertState, DelayWindow};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub cond: AlertCondition,
    pub expression: String,
    pub window_us: i64,
    pub for_us: i64,
    pub resolve_for_us: i64,
    pub hysteresis: f64,
    pub severity: String,
    pub cluster: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Rule {
    pub fn from_config(c: &AlertRuleConfig) -> Result<Rule, String> {
        let cond: AlertCondition = c
            .when
            .parse()
            .map_err(|e| format!("alert {}: {e}", c.name))?;
        let window_us = c.window.as_micros_i64();
        Ok(Rule {
            name: c.name.clone(),
            cond,
            expression: c.when.clone(),
            window_us,
            for_us: c.for_.as_micros_i64(),
            resolve_for_us: c
                .resolve_for
                .map(|d| d.as_micros_i64())
                .unwrap_or(window_us),
            hysteresis: c.hysteresis,
            severity: c.severity.clone(),
            cluster: c.cluster.clone(),
            labels: c.labels.clone(),
        })
    }

    /// Delay conditions are in microseconds; everything else is a count.
    pub fn is_delay(&self) -> bool {
        matches!(
            self.cond.metric,
            AlertMetric::Min
                | AlertMetric::P50
                | AlertMetric::P90
                | AlertMetric::P99
                | AlertMetric::Max
        )
    }
}

/// Stable id of (rule, cluster, replica): the first 16 hex digits of a SHA-256.
pub fn fingerprint(rule: &str, cluster: &str, replica: &str) -> String {
    let mut h = Sha256::new();
    for part in [rule, cluster, replica] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..8])
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Inactive,
    Pending {
        since: i64,
    },
    Firing {
        since: i64,
        clear_since: Option<i64>,
    },
}

#[derive(Debug)]
struct Track {
    phase: Phase,
    last_end: Option<i64>,
}

#[derive(Debug)]
pub struct AlertEngine {
    rules: Vec<Rule>,
    tracks: HashMap<String, Track>,
}

impl AlertEngine {
    pub fn new(rules: Vec<Rule>) -> AlertEngine {
        AlertEngine {
            rules,
            tracks: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Continue from the latest state per fingerprint. Returns the alerts that are firing
    /// (already announced; Alertmanager webhooks keep re-posting them).
    pub fn restore(&mut self, latest: impl IntoIterator<Item = Alert>) -> Vec<Alert> {
        let mut firing = Vec::new();
        for a in latest {
            if a.state != AlertState::Firing || !self.rules.iter().any(|r| r.name == a.rule) {
                continue;
            }
            self.tracks.insert(
                a.fingerprint.clone(),
                Track {
                    phase: Phase::Firing {
                        since: a.since_us,
                        clear_since: None,
                    },
                    last_end: Some(a.at_us),
                },
            );
            firing.push(a);
        }
        firing
    }

    /// Stop owning `cluster`/`replica` (its partition moved): its tracks go, and the
    /// fingerprints of its firing incidents are returned (their new owner continues them).
    pub fn forget(&mut self, cluster: &str, replica: &str) -> Vec<(String, String)> {
        let mut firing = Vec::new();
        for rule in &self.rules {
            let fp = fingerprint(&rule.name, cluster, replica);
            if let Some(t) = self.tracks.remove(&fp) {
                if matches!(t.phase, Phase::Firing { .. }) {
                    firing.push((rule.name.clone(), fp));
                }
            }
        }
        firing
    }

    /// Whether an incident of any rule is pending or firing on `cluster`/`replica`.
    pub fn active_on(&self, cluster: &str, replica: &str) -> bool {
        self.rules.iter().any(|rule| {
            self.tracks
                .get(&fingerprint(&rule.name, cluster, replica))
                .is_some_and(|t| !matches!(t.phase, Phase::Inactive))
        })
    }

    /// Drop the quiet tracks of a replica no longer reported (see `Windows::prune_silent`).
    pub fn prune(&mut self, cluster: &str, replica: &str) {
        for rule in &self.rules {
            let fp = fingerprint(&rule.name, cluster, replica);
            if self
                .tracks
                .get(&fp)
                .is_some_and(|t| matches!(t.phase, Phase::Inactive))
            {
                self.tracks.remove(&fp);
            }
        }
    }

    /// Tracks kept (tests).
    #[cfg(test)]
    pub fn tracks(&self) -> usize {
        self.tracks.len()
    }

    /// The fingerprints of the firing incidents owned here.
    pub fn firing(&self) -> impl Iterator<Item = &String> {
        self.tracks
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Firing { .. }))
            .map(|(fp, _)| fp)
    }

    /// Evaluate every rule that reads this window; returns the transitions.
    pub fn on_window(&mut self, w: &DelayWindow) -> Vec<Alert> {
        let mut out = Vec::new();
        for rule in &self.rules {
            if rule.window_us != w.window_us
                || rule.cluster.as_deref().is_some_and(|c| c != w.cluster)
            {
                continue;
            }
            if rule.is_delay() && w.count > 0 && w.upper_bounds == w.count {
                // Only upper bounds (a reader that looked late, after its start or a restart):
                // they say how late the reader was, not the replica. No evidence either way.
                continue;
            }
            let fp = fingerprint(&rule.name, &w.cluster, &w.replica);
            let track = self.tracks.entry(fp.clone()).or_insert(Track {
                phase: Phase::Inactive,
                last_end: None,
            });
            let start = w.window_start_us;
            let end = start + w.window_us;
            if track.last_end.is_some_and(|le| start < le) {
                continue; // already evaluated (a replay) or out of order
            }
            let adjacent = track.last_end == Some(start);
            let firing = matches!(track.phase, Phase::Firing { .. });
            let value = rule.cond.metric.value(w);
            let holds = value.is_some_and(|v| rule.cond.holds(v, firing, rule.hysteresis));
            let value = value.unwrap_or(0.0);
            let alert = |state, since_us| Alert {
                rule: rule.name.clone(),
                cluster: w.cluster.clone(),
                replica: w.replica.clone(),
                state,
                severity: rule.severity.clone(),
                expression: rule.expression.clone(),
                value,
                threshold: rule.cond.threshold,
                since_us,
                at_us: end,
                fingerprint: fp.clone(),
                labels: rule.labels.clone(),
            };
            track.phase = match track.phase {
                Phase::Inactive | Phase::Pending { .. } if holds => {
                    let since = match track.phase {
                        Phase::Pending { since } if adjacent => since,
                        _ => start,
                    };
                    if end - since >= rule.for_us {
                        out.push(alert(AlertState::Firing, since));
                        Phase::Firing {
                            since,
                            clear_since: None,
                        }
                    } else {
                        Phase::Pending { since }
                    }
                }
                Phase::Inactive | Phase::Pending { .. } => Phase::Inactive,
                Phase::Firing { since, .. } if holds => Phase::Firing {
                    since,
                    clear_since: None,
                },
                Phase::Firing { since, clear_since } => {
                    let clear = clear_since.unwrap_or(start);
                    if end - clear >= rule.resolve_for_us {
                        out.push(alert(AlertState::Resolved, since));
                        Phase::Inactive
                    } else {
                        Phase::Firing {
                            since,
                            clear_since: Some(clear),
                        }
                    }
                }
            };
            track.last_end = Some(end);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::duration::HumanDuration;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_763_000_000 * S;

    fn rule(when: &str, window_s: u64, for_s: u64, resolve_s: Option<u64>, hyst: f64) -> Rule {
        Rule::from_config(&AlertRuleConfig {
            name: "lag".into(),
            when: when.into(),
            window: HumanDuration::from_secs(window_s),
            for_: HumanDuration::from_secs(for_s),
            resolve_for: resolve_s.map(HumanDuration::from_secs),
            hysteresis: hyst,
            severity: "critical".into(),
            cluster: None,
            labels: BTreeMap::new(),
        })
        .unwrap()
    }

    fn w(i: i64, len_s: i64, p99_ms: i64) -> DelayWindow {
        DelayWindow {
            cluster: "main".into(),
            replica: "r1".into(),
            window_start_us: T0 + i * len_s * S,
            window_us: len_s * S,
            count: 10,
            missing: 0,
            min_us: Some(1),
            p50_us: Some(1),
            p90_us: Some(1),
            p99_us: Some(p99_ms * 1000),
            max_us: Some(p99_ms * 1000),
            timeouts: 0,
            unreachable: 0,
            replication_stopped: 0,
            skipped: 0,
            upper_bounds: 0,
            duplicates: 0,
        }
    }

    fn states(e: &mut AlertEngine, ws: &[DelayWindow]) -> Vec<(usize, AlertState)> {
        ws.iter()
            .enumerate()
            .flat_map(|(i, w)| {
                e.on_window(w)
                    .into_iter()
                    .map(move |a| (i, a.state))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn fires_after_for_and_resolves_after_resolve_for() {
        let mut e = AlertEngine::new(vec![rule("p99 > 500ms", 10, 30, Some(20), 0.0)]);
        let ws: Vec<_> = [100, 600, 700, 800, 900, 100, 900, 100, 100, 100]
            .iter()
            .enumerate()
            .map(|(i, v)| w(i as i64, 10, *v))
            .collect();
        // Holds from window 1; three windows = 30 s → fires on window 3. Clears at 5, holds
        // again at 6 (still firing), clears from 7: 20 s later, on window 8, resolved.
        assert_eq!(
            states(&mut e, &ws),
            vec![(3, AlertState::Firing), (8, AlertState::Resolved)]
        );
    }

    #[test]
    fn firing_alert_carries_since_value_and_fingerprint() {
        let mut e = AlertEngine::new(vec![rule("p99 > 500ms", 1, 0, None, 0.0)]);
        let a = e.on_window(&w(0, 1, 800)).pop().unwrap();
        assert_eq!(a.state, AlertState::Firing);
        assert_eq!((a.since_us, a.at_us), (T0, T0 + S));
        assert_eq!((a.value, a.threshold), (800_000.0, 500_000.0));
        assert_eq!(a.fingerprint, fingerprint("lag", "main", "r1"));
        assert_eq!(a.fingerprint.len(), 16);
        // Default resolve_for is one window.
        let r = e.on_window(&w(1, 1, 100)).pop().unwrap();
        assert_eq!((r.state, r.since_us), (AlertState::Resolved, T0));
    }

    #[test]
    fn pruning_drops_quiet_tracks_and_keeps_open_incidents() {
        let mut e = AlertEngine::new(vec![rule("p99 > 500ms", 1, 0, None, 0.0)]);
        e.on_window(&w(0, 1, 100));
        assert!(!e.active_on("main", "r1"));
        e.prune("main", "r1");
        assert_eq!(e.tracks(), 0, "a quiet track goes");
        assert_eq!(e.on_window(&w(1, 1, 900)).len(), 1);
        assert!(e.active_on("main", "r1"));
        e.prune("main", "r1");
        assert_eq!(e.tracks(), 1, "a firing incident stays, to be resolved");
    }

    #[test]
    fn a_gap_restarts_pending() {
        let mut e = AlertEngine::new(vec![rule("p99 > 500ms", 10, 20, None, 0.0)]);
        let ws = vec![w(0, 10, 900), w(2, 10, 900), w(3, 10, 900)];
        assert_eq!(states(&mut e, &ws), vec![(2, AlertState::Firing)]);
    }

    #[test]
    fn hysteresis_keeps_it_firing_near_the_threshold() {
        let mut e = AlertEngine::new(vec![rule("p99 > 100ms", 1, 0, None, 0.1)]);
        let ws = vec![w(0, 1, 150), w(1, 1, 95), w(2, 1, 85)];
        assert_eq!(
            states(&mut e, &ws),
            vec![(0, AlertState::Firing), (2, AlertState::Resolved)]
        );
    }

    #[test]
    fn restored_incident_is_not_announced_again() {
        let mut first = AlertEngine::new(vec![rule("p99 > 500ms", 1, 0, None, 0.0)]);
        let fired = first.on_window(&w(0, 1, 900)).pop().unwrap();
        let mut second = AlertEngine::new(vec![rule("p99 > 500ms", 1, 0, None, 0.0)]);
        assert_eq!(second.restore(vec![fired.clone()]).len(), 1);
        assert!(
            second.on_window(&w(0, 1, 900)).is_empty(),
            "replayed window"
        );
        assert!(second.on_window(&w(1, 1, 900)).is_empty(), "still firing");
        let r = second.on_window(&w(2, 1, 10)).pop().unwrap();
        assert_eq!(
            (r.state, r.since_us),
            (AlertState::Resolved, fired.since_us)
        );
    }

    #[test]
    fn a_window_of_upper_bounds_only_raises_no_delay_alert_and_clears_none() {
        let mut e = AlertEngine::new(vec![
            rule("max > 300ms", 1, 0, None, 0.0),
            rule("count < 50", 1, 0, None, 0.0),
        ]);
        let mut bounds = w(0, 1, 1_500);
        bounds.upper_bounds = bounds.count;
        let fired = e.on_window(&bounds);
        assert_eq!(fired.len(), 1, "only the count rule reads it");
        assert!(fired[0].expression.starts_with("count"));
        // While a delay alert fires, a window of bounds does not resolve it either.
        let mut e = AlertEngine::new(vec![rule("max > 300ms", 1, 0, None, 0.0)]);
        assert_eq!(e.on_window(&w(0, 1, 900)).len(), 1);
        let mut low_bounds = w(1, 1, 1);
        low_bounds.upper_bounds = low_bounds.count;
        assert!(e.on_window(&low_bounds).is_empty());
        let r = e.on_window(&w(2, 1, 1)).pop().unwrap();
        assert_eq!(r.state, AlertState::Resolved);
    }

    #[test]
    fn other_window_lengths_and_clusters_are_ignored() {
        let mut r = rule("p99 > 500ms", 10, 0, None, 0.0);
        r.cluster = Some("other".into());
        let mut e = AlertEngine::new(vec![rule("p99 > 500ms", 10, 0, None, 0.0), r]);
        assert!(e.on_window(&w(0, 1, 900)).is_empty());
        assert_eq!(e.on_window(&w(0, 10, 900)).len(), 1);
    }
}
