//! Built-in rules on silence, on the wall clock (`[processor.stale]`):
//!
//! - `heartbeats-stale` per cluster: no heartbeat announced for `heartbeats_after` (its writer
//!   or primary is down). Evaluated by the owner of partition 0 only (see `incidents.rs`).
//! - `measurements-stale` per replica: its cluster announces heartbeats, but no replica-delay
//!   record (measurement or live-lag sample) came for it for `measurements_after` (every
//!   reader group is down). Evaluated for the replicas of the partitions owned here; a replica
//!   silent for [`FORGET_AFTER_US`] is taken as gone and its incident resolved.
//!
//! Transitions are ordinary [`Alert`]s (value and threshold in seconds) through the same
//! alert topics and webhooks as the `[[alert]]` rules.

use super::fingerprint;
use millilag_core::config::StaleConfig;
use millilag_core::events::{Alert, AlertState};
use std::collections::{BTreeMap, HashMap};

pub const HEARTBEATS_STALE: &str = "heartbeats-stale";
pub const MEASUREMENTS_STALE: &str = "measurements-stale";

/// A replica silent this long is taken as gone (a pod that moved, a replica removed).
pub const FORGET_AFTER_US: i64 = 600_000_000;

/// A replica this processor owns, as the stale rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSeen<'a> {
    pub cluster: &'a str,
    pub replica: &'a str,
    /// When its last record arrived (processor clock).
    pub last_record_us: i64,
}

#[derive(Debug)]
pub struct StaleRules {
    heartbeats_after_us: i64,
    measurements_after_us: i64,
    severity: String,
    /// Open incidents by fingerprint.
    firing: HashMap<String, Alert>,
    /// Per cluster, the last heartbeat time seen and when heartbeats last came back after a
    /// pause longer than the heartbeats-stale threshold: readers can measure nothing while no
    /// heartbeat comes, so their silence counts from then (see [`Self::evaluate`]).
    heartbeats: HashMap<String, HeartbeatStreak>,
}

#[derive(Debug, Clone, Copy)]
struct HeartbeatStreak {
    last_us: i64,
    resumed_at_us: Option<i64>,
}

impl StaleRules {
    pub fn new(c: &StaleConfig) -> StaleRules {
        StaleRules {
            heartbeats_after_us: c.heartbeats_after.as_micros_i64(),
            measurements_after_us: c.measurements_after.as_micros_i64(),
            severity: c.severity.clone(),
            firing: HashMap::new(),
            heartbeats: HashMap::new(),
        }
    }

    pub fn is_ours(rule: &str) -> bool {
        rule == HEARTBEATS_STALE || rule == MEASUREMENTS_STALE
    }

    /// Continue an incident another processor (or an earlier run) announced.
    pub fn adopt(&mut self, a: Alert) {
        if Self::is_ours(&a.rule) && a.state == AlertState::Firing {
            self.firing.insert(a.fingerprint.clone(), a);
        }
    }

    /// Stop owning the incidents of `cluster`/`replica` (`""`: the cluster-wide ones).
    pub fn forget(&mut self, cluster: &str, replica: &str) -> Vec<(String, String)> {
        let gone: Vec<(String, String)> = self
            .firing
            .values()
            .filter(|a| a.cluster == cluster && a.replica == replica)
            .map(|a| (a.rule.clone(), a.fingerprint.clone()))
            .collect();
        for (_, fp) in &gone {
            self.firing.remove(fp);
        }
        gone
    }

    /// Whether a stale incident is open on `cluster`/`replica`.
    pub fn firing_on(&self, cluster: &str, replica: &str) -> bool {
        self.firing
            .values()
            .any(|a| a.cluster == cluster && a.replica == replica)
    }

    /// The clusters with an open cluster-wide incident.
    pub fn clusters_firing(&self) -> Vec<String> {
        self.firing
            .values()
            .filter(|a| a.replica.is_empty())
            .map(|a| a.cluster.clone())
            .collect()
    }

    /// The fingerprints of the open incidents (not dormant).
    pub fn owned(&self) -> impl Iterator<Item = &String> {
        self.firing.keys()
    }

    /// Transitions at `now`. `clusters`: each cluster and when its last heartbeat arrived;
    /// `cluster_rules`: this processor owns partition 0.
    pub fn evaluate<'a>(
        &mut self,
        now: i64,
        clusters: &[(String, i64)],
        cluster_rules: bool,
        replicas: impl Iterator<Item = ReplicaSeen<'a>>,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let last_heartbeat: BTreeMap<&str, i64> =
            clusters.iter().map(|(c, t)| (c.as_str(), *t)).collect();
        // A pause in heartbeats longer than this (a dead writer) restarts the readers' count.
        let pause_us = if self.heartbeats_after_us > 0 {
            self.heartbeats_after_us
        } else {
            self.measurements_after_us
        };
        for (cluster, last) in &last_heartbeat {
            let streak = self
                .heartbeats
                .entry(cluster.to_string())
                .or_insert(HeartbeatStreak {
                    last_us: *last,
                    resumed_at_us: None,
                });
            if last.saturating_sub(streak.last_us) > pause_us {
                streak.resumed_at_us = Some(*last);
            }
            streak.last_us = streak.last_us.max(*last);
        }
        if cluster_rules && self.heartbeats_after_us > 0 {
            for (cluster, last) in &last_heartbeat {
                let silent = now - last;
                let stale = silent > self.heartbeats_after_us;
                let expression = format!(
                    "no heartbeat announced for {}s",
                    self.heartbeats_after_us as f64 / 1e6
                );
                self.step(
                    &mut out,
                    HEARTBEATS_STALE,
                    cluster,
                    "",
                    stale,
                    *last,
                    now,
                    silent,
                    self.heartbeats_after_us,
                    expression,
                );
            }
        }
        if self.measurements_after_us > 0 {
            for r in replicas {
                // Silent since its last record, or since heartbeats came back after a pause
                // when that is later: when a dead writer's heartbeats resume, the readers'
                // records for them follow within a Kafka round trip, and their last records
                // (from before the pause) must not fire the rule in between.
                let since = self
                    .heartbeats
                    .get(r.cluster)
                    .and_then(|s| s.resumed_at_us)
                    .map_or(r.last_record_us, |t| t.max(r.last_record_us));
                let silent = now - since;
                // A cluster whose heartbeats this processor knows nothing of (not configured,
                // none seen) cannot tell a dead writer from dead readers: no alert.
                let heartbeats_fresh = last_heartbeat
                    .get(r.cluster)
                    .is_some_and(|t| now - t <= self.heartbeats_after_us.max(1));
                let fp = fingerprint(MEASUREMENTS_STALE, r.cluster, r.replica);
                let firing = self.firing.contains_key(&fp);
                // Fires only while heartbeats come (silence without heartbeats is the writer's,
                // not the readers'); once firing, holds until records come back or the replica
                // is taken as gone.
                let stale = silent > self.measurements_after_us
                    && silent < FORGET_AFTER_US
                    && (heartbeats_fresh || firing);
                let expression = format!(
                    "no measurement for {}s",
                    self.measurements_after_us as f64 / 1e6
                );
                self.step(
                    &mut out,
                    MEASUREMENTS_STALE,
                    r.cluster,
                    r.replica,
                    stale,
                    since,
                    now,
                    silent,
                    self.measurements_after_us,
                    expression,
                );
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        out: &mut Vec<Alert>,
        rule: &str,
        cluster: &str,
        replica: &str,
        stale: bool,
        silent_since: i64,
        now: i64,
        silent_us: i64,
        threshold_us: i64,
        expression: String,
    ) {
        let fp = fingerprint(rule, cluster, replica);
        match (stale, self.firing.get(&fp)) {
            (true, None) => {
                let a = Alert {
                    rule: rule.to_string(),
                    cluster: cluster.to_string(),
                    replica: replica.to_string(),
                    state: AlertState::Firing,
                    severity: self.severity.clone(),
                    expression,
                    value: silent_us as f64 / 1e6,
                    threshold: threshold_us as f64 / 1e6,
                    since_us: silent_since,
                    at_us: now,
                    fingerprint: fp.clone(),
                    labels: BTreeMap::new(),
                };
                self.firing.insert(fp, a.clone());
                out.push(a);
            }
            (false, Some(open)) => {
                let a = Alert {
                    state: AlertState::Resolved,
                    value: silent_us.max(0) as f64 / 1e6,
                    at_us: now,
                    ..open.clone()
                };
                self.firing.remove(&fp);
                out.push(a);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::duration::HumanDuration;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_763_000_000 * S;

    fn rules() -> StaleRules {
        StaleRules::new(&StaleConfig {
            heartbeats_after: HumanDuration::from_secs(5),
            measurements_after: HumanDuration::from_secs(5),
            severity: "critical".into(),
        })
    }

    fn seen(last: i64) -> ReplicaSeen<'static> {
        ReplicaSeen {
            cluster: "main",
            replica: "db2:3306",
            last_record_us: last,
        }
    }

    fn states(v: &[Alert]) -> Vec<(&str, &str, AlertState)> {
        v.iter()
            .map(|a| (a.rule.as_str(), a.replica.as_str(), a.state))
            .collect()
    }

    #[test]
    fn a_dead_writer_fires_heartbeats_stale_once_and_resolves_when_it_is_back() {
        let mut r = rules();
        let hb = |t| vec![("main".to_string(), t)];
        assert!(r
            .evaluate(T0 + 4 * S, &hb(T0), true, [seen(T0)].into_iter())
            .is_empty());
        let fired = r.evaluate(T0 + 6 * S, &hb(T0), true, [seen(T0)].into_iter());
        assert_eq!(
            states(&fired),
            vec![(HEARTBEATS_STALE, "", AlertState::Firing)]
        );
        assert_eq!(fired[0].since_us, T0);
        assert!(fired[0].value > 5.0);
        // Still silent: no second firing, and no measurements-stale (nothing to measure).
        assert!(r
            .evaluate(T0 + 9 * S, &hb(T0), true, [seen(T0)].into_iter())
            .is_empty());
        let back = r.evaluate(
            T0 + 10 * S,
            &hb(T0 + 10 * S),
            true,
            [seen(T0 + 10 * S)].into_iter(),
        );
        assert_eq!(
            states(&back),
            vec![(HEARTBEATS_STALE, "", AlertState::Resolved)]
        );
    }

    #[test]
    fn readers_down_fire_measurements_stale_per_replica() {
        let mut r = rules();
        let fresh = |t| vec![("main".to_string(), t)];
        let fired = r.evaluate(T0 + 6 * S, &fresh(T0 + 6 * S), true, [seen(T0)].into_iter());
        assert_eq!(
            states(&fired),
            vec![(MEASUREMENTS_STALE, "db2:3306", AlertState::Firing)]
        );
        let back = r.evaluate(
            T0 + 7 * S,
            &fresh(T0 + 7 * S),
            true,
            [seen(T0 + 7 * S)].into_iter(),
        );
        assert_eq!(
            states(&back),
            vec![(MEASUREMENTS_STALE, "db2:3306", AlertState::Resolved)]
        );
        // A replica silent for good is taken as gone after 10 minutes (heartbeats keep coming,
        // evaluated every second as the run loop does far more often).
        let mut transitions = Vec::new();
        for t in (8 * S..=7 * S + FORGET_AFTER_US).step_by(S as usize) {
            let out = r.evaluate(T0 + t, &fresh(T0 + t), true, [seen(T0 + 7 * S)].into_iter());
            transitions.extend(out.iter().map(|a| (a.state, a.at_us - T0)));
        }
        assert_eq!(
            transitions,
            vec![
                (AlertState::Firing, 13 * S),
                (AlertState::Resolved, 7 * S + FORGET_AFTER_US)
            ]
        );
    }

    #[test]
    fn readers_are_not_stale_while_a_dead_writers_heartbeats_resume() {
        let mut r = rules();
        let hb = |t| vec![("main".to_string(), t)];
        // Heartbeats and records until T0; the writer is dead for 8 s.
        assert!(r
            .evaluate(T0, &hb(T0), false, [seen(T0)].into_iter())
            .is_empty());
        assert!(r
            .evaluate(T0 + 7 * S, &hb(T0), false, [seen(T0)].into_iter())
            .is_empty());
        // Its heartbeats are back; the readers' records for them are still on their way.
        let back = T0 + 8 * S;
        assert!(
            r.evaluate(
                back + 20_000,
                &hb(back + 10_000),
                false,
                [seen(T0)].into_iter()
            )
            .is_empty(),
            "the readers' last records are from before the pause"
        );
        assert!(r
            .evaluate(
                back + 4 * S,
                &hb(back + 4 * S),
                false,
                [seen(T0)].into_iter()
            )
            .is_empty());
        // No record for 5 s of heartbeats after the writer came back: the readers are down.
        let fired = r.evaluate(
            back + 6 * S,
            &hb(back + 6 * S),
            false,
            [seen(T0)].into_iter(),
        );
        assert_eq!(
            states(&fired),
            vec![(MEASUREMENTS_STALE, "db2:3306", AlertState::Firing)]
        );
        assert_eq!(
            fired[0].since_us,
            back + 10_000,
            "silent since heartbeats resumed"
        );
    }

    #[test]
    fn only_the_owner_of_partition_0_evaluates_cluster_rules_and_adopted_incidents_resolve_once() {
        let mut other = rules();
        let hb = vec![("main".to_string(), T0)];
        assert!(other
            .evaluate(T0 + 6 * S, &hb, false, std::iter::empty())
            .is_empty());
        let mut first = rules();
        let fired = first.evaluate(T0 + 6 * S, &hb, true, std::iter::empty());
        // The owner changes: the old one forgets, the new one adopts, and resolves once.
        assert_eq!(
            first.forget("main", ""),
            vec![(HEARTBEATS_STALE.to_string(), fired[0].fingerprint.clone())]
        );
        other.adopt(fired[0].clone());
        assert!(
            other
                .evaluate(T0 + 7 * S, &hb, true, std::iter::empty())
                .is_empty(),
            "no second firing"
        );
        let back = vec![("main".to_string(), T0 + 8 * S)];
        let resolved = other.evaluate(T0 + 8 * S, &back, true, std::iter::empty());
        assert_eq!(
            states(&resolved),
            vec![(HEARTBEATS_STALE, "", AlertState::Resolved)]
        );
        assert_eq!(resolved[0].since_us, T0);
    }

    #[test]
    fn a_cluster_without_known_heartbeats_never_fires_measurements_stale() {
        let mut r = rules();
        assert!(r
            .evaluate(T0 + 60 * S, &[], true, [seen(T0)].into_iter())
            .is_empty());
    }

    #[test]
    fn zero_turns_a_rule_off() {
        let mut r = StaleRules::new(&StaleConfig {
            heartbeats_after: HumanDuration::from_secs(0),
            measurements_after: HumanDuration::from_secs(0),
            severity: "warning".into(),
        });
        let hb = vec![("main".to_string(), T0)];
        assert!(r
            .evaluate(T0 + 60 * S, &hb, true, [seen(T0)].into_iter())
            .is_empty());
    }
}
