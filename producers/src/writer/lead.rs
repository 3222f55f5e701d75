//! Leading a cluster: take the lock (or stand by behind it), continue the cluster's numbering,
//! and write heartbeats on the drift-free schedule until shutdown or the session fails.
//!
//! Every statement is bounded by `query_timeout`. A leader's proof that it still holds the lock
//! is its session answering: a heartbeat that fails or gets no answer in time ends the
//! leadership at once (the gauge drops, the session is abandoned), and the server, whose idle
//! limit for the session is a few seconds, frees the lock for a standby if the writer itself
//! went silent.

use super::session::Session;
use super::trouble::{Status, Trouble};
use super::{Announcement, ClusterWriter};
use millilag_core::db;
use millilag_core::events::HeartbeatSet;
use millilag_core::shutdown::Shutdown;
use mysql_async::prelude::*;
use std::sync::atomic::Ordering;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info};

/// Why the leader loop ended.
pub(super) enum Ended {
    Shutdown,
    Lost(Trouble),
}

impl ClusterWriter {
    /// Stand by until the lock is ours, then write heartbeats until shutdown or an error.
    pub(super) async fn lead_or_stand_by(
        &self,
        s: &mut Session,
        shutdown: &mut Shutdown,
        status: &mut Status,
    ) -> Ended {
        let mut standing_by = false;
        let mut retry = tokio::time::interval(self.interval);
        retry.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let limit = s.timeouts.query;
        loop {
            // The lock and read_only in one round trip: a standby on a server that was demoted
            // moves on to the writable candidate too.
            let got: Result<Option<(Option<i64>, Option<String>)>, _> = db::bounded(
                limit,
                &s.primary,
                s.conn.exec_first(
                    format!("SELECT GET_LOCK(?, 0), {}", read_only_column()),
                    (&s.lock_name,),
                ),
            )
            .await;
            match got {
                Ok(Some((_, ro))) if db::read_only_value(ro.as_deref()) => {
                    return Ended::Lost(Trouble::ReadOnly {
                        addr: s.primary.clone(),
                    })
                }
                Ok(Some((Some(1), _))) => break,
                Ok(_) => {
                    if !standing_by {
                        info!(lock = %s.lock_name, primary = %s.primary, "Another writer holds the lock; standing by.");
                        status.healthy(&format!("standing by on {}", s.primary));
                        standing_by = true;
                    }
                }
                Err(e) => {
                    return Ended::Lost(
                        Trouble::classify(&e, &s.primary, "asking for the lock", &s.table)
                            .with_limit(limit),
                    )
                }
            }
            tokio::select! {
                _ = retry.tick() => {}
                _ = shutdown.wait() => return Ended::Shutdown,
            }
        }
        match self.take_over(s, status.in_trouble()).await {
            Ok((seq, epoch)) => self.write_heartbeats(s, seq, epoch, shutdown, status).await,
            Err(t) => Ended::Lost(t),
        }
    }

    /// Continue the cluster's numbering: the largest seq in the table, whichever server wrote
    /// it (after a switchover the old primary's row came here by replication), or what this
    /// process wrote last if that is larger (commits lost in a crash). The epoch is the
    /// primary-clock time of the takeover, so it grows across takeovers by any writer.
    async fn take_over(&self, s: &mut Session, retrying: bool) -> Result<(i64, i64), Trouble> {
        let limit = s.timeouts.query;
        let row: Option<(Option<i64>, Option<String>)> = db::bounded(
            limit,
            &s.primary,
            s.conn.query_first(format!(
                "SELECT CAST(MAX(seq) AS SIGNED), UNIX_TIMESTAMP(SYSDATE(6)) FROM {}",
                s.table
            )),
        )
        .await
        .map_err(|e| {
            Trouble::classify(&e, &s.primary, "reading the last seq", &s.table).with_limit(limit)
        })?;
        let (last, now) = row.unwrap_or((None, None));
        let epoch = now
            .as_deref()
            .and_then(db::unix_text_to_us)
            .unwrap_or_else(millilag_core::clock::now_us);
        let mine = self.last_written.load(Ordering::Relaxed);
        let next = last.unwrap_or(0).max(mine) + 1;
        self.metrics.leader.set(1);
        if retrying {
            // Said at the first heartbeat instead ("working again"), if it gets that far.
            debug!(primary = %s.primary, next_seq = next, "Took the lead again.");
        } else {
            info!(
                primary = %s.primary,
                server_id = s.server_id,
                next_seq = next,
                writer_epoch = epoch,
                "Took the lead; writing heartbeats."
            );
        }
        Ok((next, epoch))
    }

    async fn write_heartbeats(
        &self,
        s: &mut Session,
        mut seq: i64,
        epoch: i64,
        shutdown: &mut Shutdown,
        status: &mut Status,
    ) -> Ended {
        let start = Instant::now();
        let mut ticker = tokio::time::interval_at(start, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last_index: Option<u64> = None;
        let interval_us = self.interval.as_micros() as i64;
        let mut healthy = false;
        loop {
            let due = tokio::select! {
                biased;
                _ = shutdown.wait() => return Ended::Shutdown,
                t = ticker.tick() => t,
            };
            // Which tick this is on the start + n*interval grid; the ones in between were
            // skipped because the previous heartbeat ran past them.
            let index = ((due - start).as_nanos() / self.interval.as_nanos().max(1)) as u64;
            if let Some(prev) = last_index {
                let skipped = index.saturating_sub(prev + 1);
                if skipped > 0 {
                    self.metrics.skipped_ticks.inc_by(skipped);
                }
            }
            last_index = Some(index);

            let t0 = Instant::now();
            let result = self.heartbeat(s, seq).await;
            let rtt = t0.elapsed();
            let Committed {
                gtid,
                committed_at_us,
                read_only_now,
            } = match result {
                Ok(v) => v,
                Err(t) => return Ended::Lost(t),
            };
            self.last_written.store(seq, Ordering::Relaxed);
            self.metrics.heartbeats.inc();
            self.metrics.commit_latency.observe(rtt.as_secs_f64());
            if !healthy {
                status.healthy(&format!("leading on {}, from seq {seq}", s.primary));
                healthy = true;
            }
            let record = HeartbeatSet {
                cluster: self.cluster.name.clone(),
                primary: s.primary.clone(),
                server_id: s.server_id,
                writer_id: self.writer_id.clone(),
                writer_epoch: epoch,
                seq,
                committed_at_us,
                gtid,
                binlog_file: None,
                binlog_pos: None,
                interval_us,
                commit_rtt_us: rtt.as_micros() as i64,
            };
            let announcement = Announcement {
                record,
                metrics: self.metrics.clone(),
            };
            if self.tx.try_send(announcement).is_err() {
                self.metrics.publish_dropped.inc();
            }
            if read_only_now {
                // The server turned read-only right after this commit (on MariaDB the guard
                // saw it writable; on MySQL, which has no guard, it may also be a user with
                // SUPER writing past read_only: use super_read_only there). It committed, so
                // it was announced; the next heartbeat goes to the writable candidate.
                return Ended::Lost(Trouble::ReadOnly {
                    addr: s.primary.clone(),
                });
            }
            seq += 1;
        }
    }

    /// One heartbeat, one round trip bounded by `query_timeout`: the upsert (autocommit), then
    /// its GTID, the primary's clock right after the commit, and `@@read_only`.
    async fn heartbeat(&self, s: &mut Session, seq: i64) -> Result<Committed, Trouble> {
        let limit = s.timeouts.query;
        let sql = s.heartbeat_sql(seq);
        let leading = s.leading_results();
        let conn = &mut s.conn;
        let round_trip = async move {
            let mut result = conn.query_iter(sql).await?;
            // The guard's and the upsert's OK packets (no rows), then the SELECT.
            for _ in 0..leading {
                let _: Vec<mysql_async::Row> = result.collect().await?;
            }
            let rows: Vec<mysql_async::Row> = result.collect().await?;
            result.drop_result().await?;
            Ok(rows)
        };
        let rows = db::bounded(limit, &s.primary, round_trip)
            .await
            .map_err(|e| {
                Trouble::classify(&e, &s.primary, "writing a heartbeat", &s.table).with_limit(limit)
            })?;
        let failed = |error: &str| Trouble::Failed {
            addr: s.primary.clone(),
            what: "reading a heartbeat's commit",
            error: error.to_string(),
        };
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| failed("the after-commit SELECT returned no row"))?;
        let last = row.len().saturating_sub(1);
        let read_only: Option<String> = row.get(last);
        let first: Option<String> = row.get(0);
        let ts: Option<String> = row.get(1);
        let uuid: Option<String> = if last > 2 { row.get(2) } else { None };
        let committed_at_us = ts
            .as_deref()
            .and_then(db::unix_text_to_us)
            .ok_or_else(|| failed("UNIX_TIMESTAMP(SYSDATE(6)) did not return a time"))?;
        let gtid = db::own_gtid(
            &s.dialect,
            first.as_deref(),
            uuid.as_deref(),
            super::MYSQL_GTID_TAG,
        );
        Ok(Committed {
            gtid,
            committed_at_us,
            read_only_now: db::read_only_value(read_only.as_deref()),
        })
    }
}

/// A heartbeat the primary acknowledged.
struct Committed {
    gtid: Option<String>,
    committed_at_us: i64,
    /// `@@read_only` was on right after the commit: time to step down.
    read_only_now: bool,
}

/// `@@read_only` as a column of a SELECT.
fn read_only_column() -> &'static str {
    db::READ_ONLY_SQL.trim_start_matches("SELECT ")
}
