//! SHOW SLAVE/REPLICA STATUS and the primary's list of replicas, in either dialect.

use super::{bounded, DbTimeouts, Dialect};
use crate::error::Result;
use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value};
use std::time::Duration;

/// What SHOW SLAVE/REPLICA STATUS says about one replica's threads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    pub configured: bool,
    pub io_running: bool,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
    pub last_error: Option<String>,
}

impl ReplicaStatus {
    pub fn replicating(&self) -> bool {
        self.configured && self.io_running && self.sql_running
    }
}

fn column(row: &Row, names: &[&str]) -> Option<String> {
    for n in names {
        if let Some(Some(v)) = row.get_opt::<Value, _>(*n).map(|r| r.ok()) {
            return match v {
                Value::NULL => None,
                Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                other => Some(other.as_sql(true).trim_matches('\'').to_string()),
            };
        }
    }
    None
}

/// Parse one SHOW SLAVE STATUS / SHOW REPLICA STATUS row (either dialect's column names).
pub fn parse_replica_status(row: Option<&Row>) -> ReplicaStatus {
    let Some(row) = row else {
        return ReplicaStatus::default();
    };
    let yes = |v: Option<String>| v.as_deref() == Some("Yes");
    let err = [
        column(row, &["Last_SQL_Error"]),
        column(row, &["Last_IO_Error"]),
    ]
    .into_iter()
    .flatten()
    .find(|e| !e.is_empty());
    ReplicaStatus {
        configured: true,
        io_running: yes(column(row, &["Slave_IO_Running", "Replica_IO_Running"])),
        sql_running: yes(column(row, &["Slave_SQL_Running", "Replica_SQL_Running"])),
        seconds_behind: column(row, &["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|s| s.parse().ok()),
        last_error: err,
    }
}

/// [`replica_status_within`] the default query timeout.
pub async fn replica_status(
    conn: &mut Conn,
    dialect: &Dialect,
    addr: &str,
) -> Result<ReplicaStatus> {
    replica_status_within(conn, dialect, addr, DbTimeouts::DEFAULT.query).await
}

/// SHOW SLAVE/REPLICA STATUS, answered within `limit` (it can block behind a busy replica
/// worker).
pub async fn replica_status_within(
    conn: &mut Conn,
    dialect: &Dialect,
    addr: &str,
    limit: Duration,
) -> Result<ReplicaStatus> {
    let rows: Vec<Row> = bounded(limit, addr, conn.query(dialect.replica_status_sql())).await?;
    Ok(parse_replica_status(rows.first()))
}

/// [`replica_hosts_within`] the default query timeout.
pub async fn replica_hosts(
    conn: &mut Conn,
    dialect: &Dialect,
    addr: &str,
) -> Result<Vec<(String, u16)>> {
    replica_hosts_within(conn, dialect, addr, DbTimeouts::DEFAULT.query).await
}

/// host:port of replicas registered with the primary, answered within `limit`.
pub async fn replica_hosts_within(
    conn: &mut Conn,
    dialect: &Dialect,
    addr: &str,
    limit: Duration,
) -> Result<Vec<(String, u16)>> {
    let rows: Vec<Row> = bounded(limit, addr, conn.query(dialect.replica_hosts_sql())).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let host = column(r, &["Host"])?;
            let port = column(r, &["Port"])?.parse().ok()?;
            (!host.is_empty()).then_some((host, port))
        })
        .collect())
}
