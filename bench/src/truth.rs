//! The truth both tools are judged by, owing nothing to either tool's clocks or stamps.
//!
//! Every transaction in the benchmark changes one heartbeat row: millilag's (`millilag.heartbeat`,
//! keyed by seq) or pt-heartbeat's (`pt.heartbeat`, keyed by its `ts` text, unique per update).
//! AFTER triggers on both tables record `SYSDATE(6)` when the row changes on the primary and
//! when the replica applies the change (the harness's triggers, keyed by seq on millilag's table
//! and by ts on pt's; see tests/harness/src/mariadb.rs for why none of it replicates). All servers
//! run on this host: one clock.
//!
//! True lag of a replica at time t = age of the oldest transaction changed on the primary and
//! not yet applied on the replica at t (0 if none). A heartbeat's true delay (replica change -
//! primary change) is that lag just before the heartbeat is applied: replication applies in
//! commit order, so at that moment it is the oldest one outstanding.

use anyhow::{Context, Result};
use millilag_harness::mariadb::{install_truth_log, TruthKey, TRUTH_DB};
use millilag_harness::{Cluster, Server};
use mysql_async::prelude::*;
use std::collections::BTreeMap;

/// Triggers on pt-heartbeat's table on the primary and every replica, like the harness's on
/// millilag's (sql_log_bin = 0 for the DDL; the table lives in the database the primary does
/// not binlog; replicas run triggers for row events: slave_run_triggers_for_rbr = ENFORCE).
pub async fn install_pt_truth(cluster: &Cluster) -> Result<()> {
    install(&cluster.primary, "pt_changed").await?;
    for r in &cluster.replicas {
        install(r, "pt_applied").await?;
    }
    Ok(())
}

async fn install(server: &Server, log: &str) -> Result<()> {
    let ts = TruthKey {
        column: "ts",
        sql_type: "VARCHAR(26)",
    };
    install_truth_log(server, "pt", "heartbeat", log, ts).await
}

async fn read_pt(server: &Server, log: &str) -> Result<BTreeMap<String, i64>> {
    let mut c = server.admin().await?;
    let rows: Vec<(String, i64)> = c
        .query(format!("SELECT ts, at_us FROM {TRUTH_DB}.{log}"))
        .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until every replica has applied everything the primary binlogged, so a change with
/// no replica time means a missed trigger, not a transaction still in flight.
pub async fn wait_caught_up(cluster: &Cluster) -> Result<()> {
    let mut p = cluster.primary.admin().await?;
    let pos: String = p
        .query_first("SELECT @@gtid_binlog_pos")
        .await?
        .context("@@gtid_binlog_pos")?;
    for r in &cluster.replicas {
        let reached: Option<i64> = r
            .admin()
            .await?
            .exec_first("SELECT MASTER_GTID_WAIT(?, 30)", (&pos,))
            .await?;
        anyhow::ensure!(reached == Some(0), "{} did not catch up", r.name);
    }
    Ok(())
}

/// Everything the triggers recorded, per replica.
pub struct Truth {
    /// millilag heartbeat seq -> (primary change, replica change), per replica.
    pub heartbeats: Vec<BTreeMap<i64, (i64, i64)>>,
    /// Every transaction's (primary change, replica change), per replica.
    pub lag: Vec<Lag>,
    /// Changes on the primary with no replica time (per replica), and the reverse.
    pub unmatched: Vec<(usize, usize)>,
}

/// `from_us`: when every trigger was in place; earlier changes may lack a replica time.
pub async fn read(cluster: &Cluster, from_us: i64) -> Result<Truth> {
    wait_caught_up(cluster).await?;
    let changed = cluster.primary_truth(0).await?;
    let pt_changed = read_pt(&cluster.primary, "pt_changed").await?;
    let mut t = Truth {
        heartbeats: Vec::new(),
        lag: Vec::new(),
        unmatched: Vec::new(),
    };
    for i in 0..cluster.replicas.len() {
        let applied = cluster.truth(i, 0).await?;
        let pt_applied = read_pt(&cluster.replicas[i], "pt_applied").await?;
        let hb: BTreeMap<i64, (i64, i64)> = changed
            .iter()
            .filter_map(|(s, p)| Some((*s, (*p, *applied.get(s)?))))
            .collect();
        let mut tx: Vec<(i64, i64)> = hb.values().copied().collect();
        tx.extend(
            pt_changed
                .iter()
                .filter_map(|(ts, p)| Some((*p, *pt_applied.get(ts)?))),
        );
        let lost = changed
            .iter()
            .filter(|(s, p)| **p >= from_us && !applied.contains_key(s))
            .count()
            + pt_changed
                .iter()
                .filter(|(ts, p)| **p >= from_us && !pt_applied.contains_key(*ts))
                .count();
        let orphans = applied.keys().filter(|s| !changed.contains_key(s)).count()
            + pt_applied
                .keys()
                .filter(|ts| !pt_changed.contains_key(*ts))
                .count();
        t.unmatched.push((lost, orphans));
        t.heartbeats.push(hb);
        t.lag.push(Lag::new(tx));
    }
    Ok(t)
}

/// One replica's true lag over time, from its transactions' (primary change, replica change).
pub struct Lag {
    /// Sorted by primary change.
    by_change: Vec<(i64, i64)>,
    /// (replica change, primary change), sorted by replica change.
    by_apply: Vec<(i64, i64)>,
}

impl Lag {
    pub fn new(mut tx: Vec<(i64, i64)>) -> Lag {
        tx.sort();
        let mut by_apply: Vec<(i64, i64)> = tx.iter().map(|(p, r)| (*r, *p)).collect();
        by_apply.sort();
        Lag {
            by_change: tx,
            by_apply,
        }
    }

    /// The true lag at each of `times` (any order), in microseconds: one sweep through the
    /// changes and applies in time order, keeping the outstanding changes in a multiset.
    pub fn at(&self, times: &[i64]) -> Vec<i64> {
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by_key(|&i| times[i]);
        let mut out = vec![0; times.len()];
        let mut outstanding: BTreeMap<i64, u32> = BTreeMap::new();
        let (mut c, mut a) = (0, 0);
        for i in order {
            let t = times[i];
            while c < self.by_change.len() && self.by_change[c].0 <= t {
                *outstanding.entry(self.by_change[c].0).or_default() += 1;
                c += 1;
            }
            // Applied at or before t: no longer outstanding (its change was added above, as a
            // change always precedes its apply).
            while a < self.by_apply.len() && self.by_apply[a].0 <= t {
                let p = self.by_apply[a].1;
                if let Some(n) = outstanding.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        outstanding.remove(&p);
                    }
                }
                a += 1;
            }
            out[i] = outstanding.keys().next().map_or(0, |p| t - p);
        }
        out
    }

    /// The largest true lag in [from, to]: it grows at 1 s/s between applies, so its maxima
    /// are just before an apply, or at `to`.
    pub fn peak(&self, from: i64, to: i64) -> i64 {
        let lo = self.by_apply.partition_point(|(r, _)| *r < from);
        let hi = self.by_apply.partition_point(|(r, _)| *r <= to);
        let mut times: Vec<i64> = self.by_apply[lo..hi].iter().map(|(r, _)| r - 1).collect();
        times.push(to);
        self.at(&times).into_iter().max().unwrap_or(0)
    }

    /// When the replica applied the first change made after `t` whose lag was under
    /// `threshold_us` (the end of a stall's backlog), if any.
    pub fn caught_up_after(&self, t: i64, threshold_us: i64) -> Option<(i64, i64)> {
        let i = self.by_change.partition_point(|(p, _)| *p <= t);
        self.by_change[i..]
            .iter()
            .find(|(p, r)| r - p < threshold_us)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::Lag;

    #[test]
    fn lag_is_the_age_of_the_oldest_outstanding_change() {
        // Changes at 10, 20, 30; applied at 12, 50, 51.
        let l = Lag::new(vec![(10, 12), (20, 50), (30, 51)]);
        assert_eq!(
            l.at(&[5, 11, 12, 19, 25, 49, 50, 51, 60]),
            vec![0, 1, 0, 0, 5, 29, 20, 0, 0]
        );
        assert_eq!(l.peak(0, 100), 29);
        assert_eq!(l.peak(0, 40), 20);
        assert_eq!(l.caught_up_after(15, 10), None);
        assert_eq!(l.caught_up_after(0, 10), Some((10, 12)));
    }
}
