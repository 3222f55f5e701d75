//! Open incidents follow the partitions of the replicas they are about.
//!
//! Each incident (a firing alert in the compacted `alert-state` topic) belongs to the processor
//! that owns its replica's `replica-delay` partition; a cluster-wide one (`replica` empty,
//! e.g. `heartbeats-stale`) to the owner of partition 0. A processor reads alert-state at start
//! and after every rebalance, keeps what it does not own yet here ("dormant"), and takes an
//! incident over when its partition is assigned: its rule continues it (a resolve, never a
//! second firing) and its webhooks re-post it. On revoke the old owner forgets it. So one
//! firing and one resolved reach a webhook, whichever processor sees each.
//!
//! A replica's partition is the reader's producer's: librdkafka's default (and pinned)
//! `consistent_random` partitioner, CRC-32 of the key `cluster/replica` modulo the partition
//! count.

use millilag_core::events::{Alert, AlertState};
use std::collections::{BTreeSet, HashMap};

/// The partition librdkafka's `consistent_random` partitioner gives a non-empty `key`.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (crc32fast::hash(key.as_bytes()) % partitions as u32) as i32
}

/// The partition an incident belongs to.
pub fn incident_partition(a: &Alert, partitions: i32) -> i32 {
    if a.replica.is_empty() {
        0
    } else {
        partition_of(&format!("{}/{}", a.cluster, a.replica), partitions)
    }
}

/// Firing incidents this processor does not own (yet).
#[derive(Debug, Default)]
pub struct Dormant {
    by_fingerprint: HashMap<String, Alert>,
}

impl Dormant {
    /// Replace with the firing incidents among `latest` (alert-state), except those already
    /// owned here.
    pub fn reload(&mut self, latest: impl IntoIterator<Item = Alert>, owned: &BTreeSet<String>) {
        self.by_fingerprint = latest
            .into_iter()
            .filter(|a| a.state == AlertState::Firing && !owned.contains(&a.fingerprint))
            .map(|a| (a.fingerprint.clone(), a))
            .collect();
    }

    /// Take the incidents whose partition is now owned.
    pub fn take_owned(&mut self, owned: &BTreeSet<i32>, partitions: i32) -> Vec<Alert> {
        let fps: Vec<String> = self
            .by_fingerprint
            .values()
            .filter(|a| owned.contains(&incident_partition(a, partitions)))
            .map(|a| a.fingerprint.clone())
            .collect();
        fps.iter()
            .filter_map(|fp| self.by_fingerprint.remove(fp))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_fingerprint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn firing(rule: &str, cluster: &str, replica: &str) -> Alert {
        Alert {
            rule: rule.into(),
            cluster: cluster.into(),
            replica: replica.into(),
            state: AlertState::Firing,
            severity: "critical".into(),
            expression: "max > 300ms".into(),
            value: 1.0,
            threshold: 0.0,
            since_us: 1,
            at_us: 2,
            fingerprint: super::super::fingerprint(rule, cluster, replica),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn librdkafka_consistent_random_is_crc32_of_the_key() {
        // crc32("main/db2:3306") computed by zlib; librdkafka's rd_crc32 is the same CRC.
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the CRC-32/IEEE check value"
        );
        let p = partition_of("main/db2:3306", 6);
        assert!((0..6).contains(&p));
        assert_eq!(partition_of("main/db2:3306", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
    }

    #[test]
    fn incidents_are_taken_over_with_their_partition() {
        let replica = firing("lag", "main", "db2:3306");
        let cluster = firing("heartbeats-stale", "main", "");
        let p = incident_partition(&replica, 6);
        let mut d = Dormant::default();
        d.reload(vec![replica.clone(), cluster.clone()], &BTreeSet::new());
        assert_eq!(d.len(), 2);
        let other: BTreeSet<i32> = (0..6).filter(|q| *q != p && *q != 0).collect();
        assert!(d.take_owned(&other, 6).is_empty(), "not ours");
        let taken = d.take_owned(&BTreeSet::from([p]), 6);
        assert_eq!(taken, vec![replica.clone()]);
        let taken = d.take_owned(&BTreeSet::from([0]), 6);
        assert_eq!(
            taken,
            vec![cluster],
            "cluster-wide incidents go with partition 0"
        );
        // A resolved incident, or one already owned here, is not dormant.
        let mut resolved = replica.clone();
        resolved.state = AlertState::Resolved;
        d.reload(vec![resolved], &BTreeSet::new());
        assert_eq!(d.len(), 0);
        d.reload(
            vec![replica.clone()],
            &BTreeSet::from([replica.fingerprint.clone()]),
        );
        assert_eq!(d.len(), 0);
    }
}
