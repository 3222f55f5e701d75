//! MySQL/MariaDB access shared by the writer and the reader: connecting, telling the dialects
//! apart, the heartbeat table, replica status and GTID waits.
//!
//! The two dialects differ in a handful of statements; each difference is one `match` here,
//! unit-tested, so the services never branch on the server kind themselves.
//!
//! Every call is bounded: [`connect_with`] by the cluster's `connect_timeout`, each statement by
//! [`bounded`] (the helpers here by [`DbTimeouts::DEFAULT`] unless given the cluster's), and
//! connections carry TCP keepalive, so a server that vanished without closing its sockets is
//! noticed even on an idle connection. A connection whose statement timed out is in an unknown
//! state: hand it to [`close`] and open another.

mod connect;
mod status;
mod time_text;
mod tls;

pub use status::{
    parse_replica_status, replica_hosts, replica_hosts_within, replica_status,
    replica_status_within, ReplicaStatus,
};
pub use time_text::{parse_pt_heartbeat_ts, pt_heartbeat_ts, unix_text_to_us};

pub use connect::{
    bounded, close, connect, connect_primary, connect_with, is_read_only, is_timeout,
    read_only_value, timed_out, DbTimeouts, CONNECT_TIMEOUT, READ_ONLY_SQL, TCP_KEEPALIVE,
};

use crate::config::validate_identifier;
use crate::error::{Error, Result};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    MariaDb { major: u32, minor: u32 },
    MySql { major: u32, minor: u32, patch: u32 },
}

impl Dialect {
    /// From `SELECT VERSION()`: "10.11.6-MariaDB-0+deb12u1-log", "8.4.3", "8.0.36-28".
    pub fn from_version(version: &str) -> Dialect {
        let mut nums = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        let (major, minor, patch) = (
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
            nums.next().unwrap_or(0),
        );
        if version.contains("MariaDB") {
            Dialect::MariaDb { major, minor }
        } else {
            Dialect::MySql {
                major,
                minor,
                patch,
            }
        }
    }

    pub fn is_mariadb(&self) -> bool {
        matches!(self, Dialect::MariaDb { .. })
    }

    fn mysql_at_least(&self, want: (u32, u32, u32)) -> bool {
        match *self {
            Dialect::MySql {
                major,
                minor,
                patch,
            } => (major, minor, patch) >= want,
            Dialect::MariaDb { .. } => false,
        }
    }

    /// Replica thread status. MySQL 8.4 removed SHOW SLAVE STATUS (REPLICA since 8.0.22);
    /// MariaDB accepts SHOW SLAVE STATUS in every version we support.
    pub fn replica_status_sql(&self) -> &'static str {
        if self.mysql_at_least((8, 0, 22)) {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        }
    }

    /// Replicas registered with a primary (those started with report_host).
    pub fn replica_hosts_sql(&self) -> &'static str {
        if self.mysql_at_least((8, 0, 22)) {
            "SHOW REPLICAS"
        } else {
            "SHOW SLAVE HOSTS"
        }
    }

    /// Current binlog coordinates. MySQL 8.4 removed SHOW MASTER STATUS (8.2 added the new name).
    pub fn binlog_status_sql(&self) -> &'static str {
        if self.mysql_at_least((8, 2, 0)) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }

    /// One blocking query that returns when the replica has applied `gtid` (or times out).
    /// Parameters: the GTID (set) and the timeout in seconds. Select expressions are evaluated
    /// in order, so the row is: the replica's clock when the wait began, its applied position
    /// then (whether the wait blocked is the server's word, see [`Dialect::gtid_included`]),
    /// the wait's result, and the replica's clock when it woke: the wait is timed by the
    /// replica itself, and the reader's scheduling drops out of the measurement. The clock
    /// readings are integer microseconds (exact: DECIMAL arithmetic), which the binary protocol
    /// carries as numbers, where text would cost an allocation each, twice per wait.
    pub fn gtid_wait_sql(&self) -> &'static str {
        match self {
            Dialect::MariaDb { .. } => {
                "SELECT CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED), @@gtid_slave_pos, MASTER_GTID_WAIT(?, ?), CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)"
            }
            Dialect::MySql { .. } => {
                "SELECT CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED), @@global.gtid_executed, WAIT_FOR_EXECUTED_GTID_SET(?, ?), CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)"
            }
        }
    }

    /// Whether `position` (the second column of [`Dialect::gtid_wait_sql`]) already includes
    /// `gtid`. None when it cannot be told (see [`Dialect::gtid_position`]).
    pub fn gtid_included(&self, position: &str, gtid: &str) -> Option<bool> {
        reaches(self.gtid_position(position, gtid), gtid)
    }

    /// The replica's number in `gtid`'s sequence (same domain and server) in `position`: 0 when
    /// nothing of the domain is applied yet. None when it cannot be told: another server's GTIDs
    /// in the domain (a failover), or MySQL (its GTID sets are not parsed here).
    pub fn gtid_position(&self, position: &str, gtid: &str) -> Option<u64> {
        match self {
            Dialect::MariaDb { .. } => {
                let (domain, server, _) = parse_mariadb_gtid(gtid)?;
                for entry in position.split(',') {
                    let Some((d, s, m)) = parse_mariadb_gtid(entry) else {
                        continue;
                    };
                    if d == domain {
                        return (s == server).then_some(m);
                    }
                }
                Some(0)
            }
            Dialect::MySql { .. } => None,
        }
    }

    /// Whether a [`Dialect::gtid_wait_sql`] result means "applied" (MariaDB returns 0 or -1 on
    /// timeout; MySQL 0 or 1 on timeout; NULL means replication is not configured/GTID off).
    pub fn gtid_wait_reached(&self, result: Option<i64>) -> Option<bool> {
        result.map(|r| r == 0)
    }

    /// The statement that follows the heartbeat UPDATE in the same round trip, returning the
    /// transaction's GTID (or the data to find it) and the primary-clock time just after commit.
    /// MariaDB has @@last_gtid. MySQL has no such variable (and mysql_async does not negotiate
    /// session tracking): with a tagged GTID (8.3+, gtid_next = 'AUTOMATIC:<tag>') the newest
    /// number of our tag in gtid_executed is ours, since only the heartbeat session uses the tag.
    pub fn after_commit_sql(&self) -> &'static str {
        match self {
            Dialect::MariaDb { .. } => "SELECT @@last_gtid, UNIX_TIMESTAMP(SYSDATE(6))",
            Dialect::MySql { .. } => {
                "SELECT @@global.gtid_executed, UNIX_TIMESTAMP(SYSDATE(6)), @@server_uuid"
            }
        }
    }

    /// Session settings that put heartbeats in their own GTID numbering, so readers can arm
    /// the wait for heartbeat n+1 before it exists. None where the dialect cannot.
    pub fn gtid_domain_sql(&self, domain: u32, tag: &str) -> Option<String> {
        match self {
            Dialect::MariaDb { .. } if domain != 0 => {
                Some(format!("SET SESSION gtid_domain_id = {domain}"))
            }
            Dialect::MySql { .. } if self.mysql_at_least((8, 3, 0)) => {
                Some(format!("SET SESSION gtid_next = 'AUTOMATIC:{tag}'"))
            }
            _ => None,
        }
    }
}

/// The GTID of our own last transaction from the after-commit row (see
/// [`Dialect::after_commit_sql`]).
pub fn own_gtid(
    dialect: &Dialect,
    first: Option<&str>,
    uuid: Option<&str>,
    tag: &str,
) -> Option<String> {
    match dialect {
        Dialect::MariaDb { .. } => first.filter(|g| !g.is_empty()).map(str::to_string),
        Dialect::MySql { .. } => {
            let (executed, uuid) = (first?, uuid?);
            mysql_tagged_gtid(executed, uuid, tag)
        }
    }
}

/// In a MySQL gtid_executed set ("uuid:1-5:tag:1-9,\nother:1-3"), the last number of
/// `uuid:tag`, returned as "uuid:tag:n".
pub fn mysql_tagged_gtid(executed: &str, uuid: &str, tag: &str) -> Option<String> {
    let member = executed
        .split(',')
        .map(str::trim)
        .find(|m| m.starts_with(uuid))?;
    let mut parts = member.split(':').skip(1);
    let mut in_tag = false;
    let mut last = None;
    for p in parts.by_ref() {
        if p.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            if in_tag {
                last = p.rsplit('-').next().map(str::to_string);
            }
        } else {
            in_tag = p == tag;
        }
    }
    last.map(|n| format!("{uuid}:{tag}:{n}"))
}

/// `DOMAIN-SERVER-SEQ` MariaDB GTIDs, split; None for anything else (MySQL, multi-domain).
pub fn parse_mariadb_gtid(gtid: &str) -> Option<(u32, u32, u64)> {
    let mut it = gtid.trim().split('-');
    let (d, s, n) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((d.parse().ok()?, s.parse().ok()?, n.parse().ok()?))
}

/// [`dialect_within`] the default query timeout.
pub async fn dialect(conn: &mut Conn, addr: &str) -> Result<Dialect> {
    dialect_within(conn, addr, DbTimeouts::DEFAULT.query).await
}

/// The server's dialect, from `SELECT VERSION()` answered within `limit`.
pub async fn dialect_within(conn: &mut Conn, addr: &str, limit: Duration) -> Result<Dialect> {
    let v: Option<String> = bounded(limit, addr, conn.query_first("SELECT VERSION()")).await?;
    Ok(Dialect::from_version(&v.unwrap_or_default()))
}

/// `db`.`table`, both validated identifiers (config validation already checked them; this is
/// the last line of defence before text goes into SQL).
pub fn qualified_table(db: &str, table: &str) -> Result<String> {
    validate_identifier(db).map_err(|e| Error::Config(format!("database {db:?}: {e}")))?;
    validate_identifier(table).map_err(|e| Error::Config(format!("table {table:?}: {e}")))?;
    Ok(format!("`{db}`.`{table}`"))
}

/// pt-heartbeat's table plus millilag's columns (DESIGN §2), so pt-heartbeat --monitor,
/// mysqld_exporter and existing dashboards keep reading it.
pub fn heartbeat_ddl(db: &str, table: &str) -> Result<Vec<String>> {
    let t = qualified_table(db, table)?;
    Ok(vec![
        format!("CREATE DATABASE IF NOT EXISTS `{db}`"),
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
  ts                    varchar(26)     NOT NULL,
  server_id             int unsigned    NOT NULL PRIMARY KEY,
  file                  varchar(255)    DEFAULT NULL,
  position              bigint unsigned DEFAULT NULL,
  relay_master_log_file varchar(255)    DEFAULT NULL,
  exec_master_log_pos   bigint unsigned DEFAULT NULL,
  seq                   bigint unsigned NOT NULL DEFAULT 0,
  writer_id             varchar(64)     DEFAULT NULL
) ENGINE=InnoDB"
        ),
    ])
}

/// What a GTID wait answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitAnswer {
    /// Some(true) when applied, Some(false) when the server's wait timed out, None when the
    /// server cannot wait (no GTID).
    pub reached: Option<bool>,
    /// The replica had it already when the wait began (it did not block), when the server's
    /// position tells ([`Dialect::gtid_included`]).
    pub already: Option<bool>,
    /// The replica's number in the GTID's sequence when the wait began, when the server's
    /// position tells ([`Dialect::gtid_position`]).
    pub position: Option<u64>,
    /// The replica's clock when the wait began and when it woke (microseconds).
    pub began_us: Option<i64>,
    pub woke_us: Option<i64>,
}

/// Whether a replica at number `at` of `gtid`'s sequence ([`Dialect::gtid_position`]) has
/// `gtid`; None when either cannot be told.
fn reaches(at: Option<u64>, gtid: &str) -> Option<bool> {
    let (_, _, n) = parse_mariadb_gtid(gtid)?;
    Some(at? >= n)
}

/// A connection for GTID waits, with the wait statement prepared on it the first time: a kept
/// statement is executed as it is, where a query string costs mysql_async a parse, a cache
/// lookup and a boxed future on every call (~2.5% of the reader's CPU at 200 replicas).
pub struct WaitSession {
    conn: Conn,
    prepared: Option<mysql_async::Statement>,
}

impl WaitSession {
    pub fn new(conn: Conn) -> WaitSession {
        WaitSession {
            conn,
            prepared: None,
        }
    }

    /// The connection, to close or drop (its prepared statement goes with it).
    pub fn into_conn(self) -> Conn {
        self.conn
    }

    /// One GTID wait ([`Dialect::gtid_wait_sql`]) for `gtid`, at most `wait_s` seconds on the
    /// server, and at most `slack` more on the client (a replica that hangs, or a network that
    /// drops the answer, would otherwise hold the wait forever); the first one on the session
    /// also prepares the statement, within `slack`. A client-side timeout is an error: drop or
    /// [`close`] the connection.
    pub async fn gtid_wait(
        &mut self,
        dialect: &Dialect,
        addr: &str,
        gtid: &str,
        wait_s: f64,
        slack: Duration,
    ) -> Result<WaitAnswer> {
        let stmt = match self.prepared.take() {
            Some(s) => s,
            None => bounded(slack, addr, self.conn.prep(dialect.gtid_wait_sql())).await?,
        };
        let limit = Duration::try_from_secs_f64(wait_s.max(0.0))
            .unwrap_or(crate::duration::MAX_DURATION)
            .saturating_add(slack);
        type Row = (Option<i64>, Option<String>, Option<i64>, Option<i64>);
        let row: Result<Option<Row>> =
            bounded(limit, addr, self.conn.exec_first(&stmt, (gtid, wait_s))).await;
        self.prepared = Some(stmt);
        let row = row?;
        let (began_us, position, reached, woke_us) = row.unwrap_or((None, None, None, None));
        // Parsed once: `already` is `Dialect::gtid_included` from the same number.
        let position = position
            .as_deref()
            .and_then(|p| dialect.gtid_position(p, gtid));
        Ok(WaitAnswer {
            reached: dialect.gtid_wait_reached(reached),
            already: reaches(position, gtid),
            position,
            began_us,
            woke_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_statements() {
        let maria = Dialect::from_version("10.11.6-MariaDB-0+deb12u1-log");
        assert_eq!(
            maria,
            Dialect::MariaDb {
                major: 10,
                minor: 11
            }
        );
        assert_eq!(maria.replica_status_sql(), "SHOW SLAVE STATUS");
        assert!(maria
            .gtid_wait_sql()
            .contains("@@gtid_slave_pos, MASTER_GTID_WAIT(?, ?), CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)"));
        assert_eq!(
            maria.gtid_domain_sql(77, "x").unwrap(),
            "SET SESSION gtid_domain_id = 77"
        );
        assert_eq!(maria.gtid_domain_sql(0, "x"), None);

        let my84 = Dialect::from_version("8.4.3");
        assert_eq!(my84.replica_status_sql(), "SHOW REPLICA STATUS");
        assert_eq!(my84.replica_hosts_sql(), "SHOW REPLICAS");
        assert_eq!(my84.binlog_status_sql(), "SHOW BINARY LOG STATUS");
        assert!(my84
            .gtid_wait_sql()
            .contains("WAIT_FOR_EXECUTED_GTID_SET(?, ?), CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)"));
        assert_eq!(
            my84.gtid_domain_sql(77, "millilag").unwrap(),
            "SET SESSION gtid_next = 'AUTOMATIC:millilag'"
        );

        let my80 = Dialect::from_version("8.0.21-log");
        assert_eq!(my80.replica_status_sql(), "SHOW SLAVE STATUS");
        assert_eq!(my80.binlog_status_sql(), "SHOW MASTER STATUS");
        assert_eq!(my80.gtid_domain_sql(77, "millilag"), None);
        let my57 = Dialect::from_version("5.7.44");
        assert_eq!(my57.replica_hosts_sql(), "SHOW SLAVE HOSTS");
    }

    #[test]
    fn gtid_wait_results() {
        let maria = Dialect::from_version("10.11.6-MariaDB");
        assert_eq!(maria.gtid_wait_reached(Some(0)), Some(true));
        assert_eq!(maria.gtid_wait_reached(Some(-1)), Some(false));
        let mysql = Dialect::from_version("8.0.36");
        assert_eq!(mysql.gtid_wait_reached(Some(1)), Some(false));
        assert_eq!(mysql.gtid_wait_reached(None), None);
    }

    #[test]
    fn whether_a_wait_blocked_is_read_from_the_position_before_it() {
        let maria = Dialect::from_version("10.11.6-MariaDB");
        assert_eq!(
            maria.gtid_included("0-1-100,77-1-41", "77-1-42"),
            Some(false)
        );
        assert_eq!(
            maria.gtid_included("0-1-100,77-1-42", "77-1-42"),
            Some(true)
        );
        assert_eq!(maria.gtid_included("77-1-900", "77-1-42"), Some(true));
        assert_eq!(
            maria.gtid_included("0-1-100", "77-1-42"),
            Some(false),
            "domain empty"
        );
        assert_eq!(maria.gtid_included("", "77-1-42"), Some(false));
        assert_eq!(
            maria.gtid_included("77-2-5", "77-1-42"),
            None,
            "another server's"
        );
        assert_eq!(maria.gtid_included("77-1-5", "not a gtid"), None);
        assert_eq!(
            maria.gtid_position("0-1-100,77-1-41", "77-1-42"),
            Some(41),
            "where the replica is in the sequence, ahead of the wait or behind it"
        );
        assert_eq!(maria.gtid_position("0-1-100", "77-1-42"), Some(0));
        assert_eq!(maria.gtid_position("77-2-5", "77-1-42"), None);
        let mysql = Dialect::from_version("8.4.3");
        assert_eq!(mysql.gtid_included("uuid:1-5", "uuid:3"), None);
        assert_eq!(mysql.gtid_position("uuid:1-5", "uuid:3"), None);
    }

    #[test]
    fn own_gtid_per_dialect() {
        let maria = Dialect::from_version("10.11.6-MariaDB");
        assert_eq!(
            own_gtid(&maria, Some("77-1-42"), None, "t").unwrap(),
            "77-1-42"
        );
        assert_eq!(own_gtid(&maria, Some(""), None, "t"), None);
        let uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let executed = format!("{uuid}:1-5:millilag:1-9:other:1-2,\nabc:1-3");
        let mysql = Dialect::from_version("8.4.0");
        assert_eq!(
            own_gtid(&mysql, Some(&executed), Some(uuid), "millilag").unwrap(),
            format!("{uuid}:millilag:9")
        );
        assert_eq!(own_gtid(&mysql, Some(&executed), Some(uuid), "nope"), None);
    }

    #[test]
    fn mariadb_gtid_parts() {
        assert_eq!(parse_mariadb_gtid("77-1-42"), Some((77, 1, 42)));
        assert_eq!(parse_mariadb_gtid("0-1-2,77-1-3"), None);
        assert_eq!(parse_mariadb_gtid("uuid:5"), None);
    }

    #[test]
    fn identifiers_are_checked_before_sql() {
        assert!(heartbeat_ddl("millilag", "heartbeat").is_ok());
        assert!(heartbeat_ddl("millilag", "x`; DROP TABLE y; --").is_err());
    }
}
