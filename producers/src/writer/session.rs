//! A heartbeat session: a connection to the cluster's writable primary, checked and prepared.
//!
//! The primary may be given as several candidate URLs. Opening a session asks all of them at
//! once and takes the one that answers with `@@read_only` off: after a switchover the writer
//! follows the promoted server. When several are writable (a promotion half done, or an old
//! primary restarted without read_only in its config) it picks no side and waits: writers that
//! picked different servers would each hold "the" lock and both lead, each continuing seq. The
//! chosen server is then prepared once: session limits (so a writer
//! that vanishes loses its lock within seconds, and no statement waits on a row lock for
//! long), the heartbeat table (created, then checked for millilag's columns), and the heartbeat
//! statement. On MariaDB that statement starts with a read-only guard, so even a user with
//! SUPER never writes to a demoted primary.

use super::lock::{lock_name, sql_string};
use super::trouble::Trouble;
use super::{ClusterWriter, MYSQL_GTID_TAG};
use millilag_core::config::DbUrl;
use millilag_core::db::{self, DbTimeouts, Dialect};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::time::Duration;
use tracing::warn;

/// A session on the primary, ready to write heartbeats.
pub(super) struct Session {
    pub(super) conn: Conn,
    /// The primary's host:port, naming it in records and errors.
    pub(super) primary: String,
    pub(super) dialect: Dialect,
    pub(super) server_id: i64,
    pub(super) table: String,
    pub(super) lock_name: String,
    /// Everything of the heartbeat statement but the seq.
    statement: HeartbeatSql,
    pub(super) timeouts: DbTimeouts,
}

/// The heartbeat statement, pre-built around the one value that changes (seq).
struct HeartbeatSql {
    before_seq: String,
    after_seq: String,
    /// Result sets before the after-commit row (the guard's, the upsert's).
    leading_results: usize,
}

/// MariaDB runs compound statements outside stored programs: the guard raises the server's own
/// read-only error (1290) before the upsert whenever read_only is on, whatever the user's
/// privileges. It is not written to the binlog, so replicas never evaluate it.
const MARIADB_READ_ONLY_GUARD: &str =
    "IF CAST(@@global.read_only AS CHAR) NOT IN ('0', 'OFF') THEN \
     SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 1290, \
     MESSAGE_TEXT = 'millilag: the server is read-only, no heartbeat written'; END IF";

impl Session {
    /// The heartbeat statement for `seq`: [guard;] upsert; after-commit SELECT whose last
    /// column is `@@read_only` (MySQL has no guard: a read-only server is noticed right after).
    pub(super) fn heartbeat_sql(&self, seq: i64) -> String {
        format!(
            "{}{seq}{}",
            self.statement.before_seq, self.statement.after_seq
        )
    }

    pub(super) fn leading_results(&self) -> usize {
        self.statement.leading_results
    }
}

/// The server-side idle limit for the heartbeat session, in seconds: a writer that stops
/// talking (partitioned, frozen) loses its session, and with it the lock, this long after its
/// last statement, instead of after the server's default of 8 hours. A healthy writer talks
/// every `interval` (leading or standing by), and a statement may take `query_timeout`.
pub(super) fn session_idle_limit(interval: Duration, timeouts: &DbTimeouts) -> u64 {
    (interval + timeouts.query).as_secs_f64().ceil().max(2.0) as u64
}

impl ClusterWriter {
    /// The one writable candidate, prepared for heartbeats; or what is wrong with each.
    pub(super) async fn open_session(&self) -> Result<Session, Vec<Trouble>> {
        let candidates = &self.cluster.primaries;
        let probes =
            futures::future::join_all(candidates.iter().map(|u| self.try_candidate(u))).await;
        let mut writable = Vec::new();
        let mut troubles = Vec::new();
        for (url, probe) in candidates.iter().zip(probes) {
            match probe {
                Ok(conn) => writable.push((conn, url)),
                Err(t) => troubles.push(t),
            }
        }
        if writable.len() > 1 {
            let addrs = writable.iter().map(|(_, u)| u.address()).collect();
            for (conn, _) in writable {
                db::close(conn).await;
            }
            return Err(vec![Trouble::SeveralWritable { addrs }]);
        }
        match writable.pop() {
            Some((conn, url)) => self.prepare(conn, url).await.map_err(|t| vec![t]),
            None => Err(troubles),
        }
    }

    /// Connect to one candidate and check it is writable.
    async fn try_candidate(&self, url: &DbUrl) -> Result<Conn, Trouble> {
        let addr = url.address();
        let t = self.cluster.db_timeouts();
        let password = self.cluster.password.as_ref().map(|p| p.expose());
        let mut conn = db::connect_with(url, password, &t).await.map_err(|e| {
            match Trouble::classify(&e, &addr, "connecting", "") {
                denied @ Trouble::Denied { .. } => denied,
                _ => Trouble::Unreachable {
                    addr: addr.clone(),
                    error: e.to_string(),
                },
            }
        })?;
        match db::is_read_only(&mut conn, &addr, t.query).await {
            Ok(false) => Ok(conn),
            Ok(true) => {
                db::close(conn).await;
                Err(Trouble::ReadOnly { addr })
            }
            Err(e) => {
                db::close(conn).await;
                Err(Trouble::classify(&e, &addr, "reading @@read_only", "").with_limit(t.query))
            }
        }
    }

    /// Session limits, the table, the statement. Closes the connection on failure.
    async fn prepare(&self, mut conn: Conn, url: &DbUrl) -> Result<Session, Trouble> {
        let addr = url.address();
        let c = &self.cluster;
        let t = c.db_timeouts();
        let table = db::qualified_table(&c.database, &c.table).map_err(|e| Trouble::Failed {
            addr: addr.clone(),
            what: "naming the heartbeat table",
            error: e.to_string(),
        })?;
        let fail = |what: &'static str| {
            let (addr, table) = (addr.clone(), table.clone());
            move |e: millilag_core::error::Error| {
                Trouble::classify(&e, &addr, what, &table).with_limit(t.query)
            }
        };
        let prepared = async {
            let dialect = db::dialect_within(&mut conn, &addr, t.query)
                .await
                .map_err(fail("reading the server version"))?;
            let idle = session_idle_limit(self.interval, &t);
            let lock_wait = t.query.as_secs_f64().ceil().max(1.0) as u64;
            let limits = format!(
                "SET SESSION wait_timeout = {idle}, innodb_lock_wait_timeout = {lock_wait}"
            );
            db::bounded(t.query, &addr, conn.query_drop(limits))
                .await
                .map_err(fail("setting session limits"))?;
            if self.create_table {
                for stmt in
                    db::heartbeat_ddl(&c.database, &c.table).map_err(fail("naming the table"))?
                {
                    db::bounded(t.query, &addr, conn.query_drop(stmt))
                        .await
                        .map_err(fail("creating the heartbeat table"))?;
                }
            }
            // A table that exists without our columns (pt-heartbeat's) passes CREATE IF NOT
            // EXISTS: find out now, with the fix, rather than fail every heartbeat.
            db::bounded(
                t.query,
                &addr,
                conn.query_drop(format!(
                    "SELECT ts, server_id, seq, writer_id FROM {table} LIMIT 0"
                )),
            )
            .await
            .map_err(fail("checking the heartbeat table's columns"))?;
            if let Some(sql) = dialect.gtid_domain_sql(self.gtid_domain_id, MYSQL_GTID_TAG) {
                if let Err(e) = db::bounded(t.query, &addr, conn.query_drop(&sql)).await {
                    if db::is_timeout(&e) {
                        return Err(fail("setting the GTID domain")(e));
                    }
                    // Heartbeats still work; readers just cannot arm waits before the event.
                    if !self
                        .gtid_domain_warned
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        warn!(error = %e, statement = %sql, "Cannot give heartbeats their own GTID numbering (MariaDB: needs BINLOG REPLAY or SUPER); readers fall back to waiting after each event.");
                    }
                }
            }
            let server_id: i64 =
                db::bounded(t.query, &addr, conn.query_first("SELECT @@server_id"))
                    .await
                    .map_err(fail("reading @@server_id"))?
                    .unwrap_or(0);
            Ok((dialect, server_id))
        };
        let (dialect, server_id) = match prepared.await {
            Ok(v) => v,
            Err(trouble) => {
                db::close(conn).await;
                return Err(trouble);
            }
        };
        let statement = heartbeat_statement(&dialect, &table, server_id, &self.writer_id);
        Ok(Session {
            conn,
            primary: addr,
            dialect,
            server_id,
            table,
            lock_name: lock_name(&c.name),
            statement,
            timeouts: t,
        })
    }
}

/// `[guard;] upsert(seq); SELECT <after-commit columns>, <read_only>`.
fn heartbeat_statement(
    dialect: &Dialect,
    table: &str,
    server_id: i64,
    writer_id: &str,
) -> HeartbeatSql {
    let (guard, leading_results) = if dialect.is_mariadb() {
        (format!("{MARIADB_READ_ONLY_GUARD}; "), 2)
    } else {
        (String::new(), 1)
    };
    // pt-heartbeat's ts format (UTC, microseconds), computed by the server: one clock.
    HeartbeatSql {
        before_seq: format!(
            "{guard}INSERT INTO {table} (ts, server_id, seq, writer_id) \
             VALUES (DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f'), {server_id}, "
        ),
        after_seq: format!(
            ", {}) ON DUPLICATE KEY UPDATE ts = VALUES(ts), seq = VALUES(seq), writer_id = VALUES(writer_id); \
             {}, {}",
            sql_string(writer_id),
            dialect.after_commit_sql(),
            db::READ_ONLY_SQL.trim_start_matches("SELECT "),
        ),
        leading_results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_heartbeats_are_guarded_against_read_only() {
        let maria = Dialect::from_version("10.11.6-MariaDB");
        let s = heartbeat_statement(&maria, "`m`.`h`", 7, "w'1");
        let sql = format!("{}42{}", s.before_seq, s.after_seq);
        assert!(
            sql.starts_with("IF CAST(@@global.read_only AS CHAR) NOT IN"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "VALUES (DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f'), 7, 42, 'w''1')"
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                "SELECT @@last_gtid, UNIX_TIMESTAMP(SYSDATE(6)), CAST(@@global.read_only AS CHAR)"
            ),
            "{sql}"
        );
        assert_eq!(s.leading_results, 2);
        let mysql = Dialect::from_version("8.4.3");
        let s = heartbeat_statement(&mysql, "`m`.`h`", 7, "w");
        assert!(s.before_seq.starts_with("INSERT INTO `m`.`h`"));
        assert_eq!(s.leading_results, 1);
    }

    #[test]
    fn idle_limit_outlasts_the_longest_silence_of_a_healthy_writer() {
        let t = DbTimeouts::DEFAULT;
        assert_eq!(session_idle_limit(Duration::from_millis(10), &t), 6);
        assert_eq!(session_idle_limit(Duration::from_secs(60), &t), 65);
        let fast = DbTimeouts {
            connect: Duration::from_secs(1),
            query: Duration::from_millis(300),
        };
        assert_eq!(session_idle_limit(Duration::from_millis(10), &fast), 2);
    }
}
