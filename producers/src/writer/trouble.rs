//! Why a cluster's writer is not writing, said once per cause with the fix, and the backoff
//! between attempts.
//!
//! Every failed attempt (a candidate that does not answer or is read-only, a table without
//! millilag's columns, a missing privilege, a statement that timed out) becomes a [`Trouble`].
//! [`Status`] logs a trouble the first time it is seen and stays quiet while it lasts, waits by
//! [`RetryPolicy::RECONNECT`] between attempts, and only starts over (backoff reset, "working
//! again" logged) once the writer is healthy again: standing by behind another writer's lock, or
//! a heartbeat committed. A session that connects but cannot write therefore backs off like an
//! unreachable server instead of reconnecting in a loop.

use super::metrics::ClusterMetrics;
use super::Readiness;
use millilag_core::db;
use millilag_core::error::Error;
use millilag_core::retry::{Backoff, RetryPolicy};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// One reason a cluster's writer is not writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Trouble {
    /// A primary candidate did not answer (connect failed or timed out).
    Unreachable { addr: String, error: String },
    /// A primary candidate has `read_only` on: not the primary, or demoted.
    ReadOnly { addr: String },
    /// More than one primary candidate is writable: no side is picked.
    SeveralWritable { addrs: Vec<String> },
    /// The server refused the user or a statement for lack of a privilege.
    Denied {
        addr: String,
        error: String,
        fix: String,
    },
    /// The heartbeat table exists without millilag's columns (e.g. pt-heartbeat's own table).
    MissingColumns { table: String, error: String },
    /// No heartbeat table, and `create_table = false`.
    MissingTable { table: String },
    /// `writer_id` does not fit the table's column.
    WriterIdTooLong { addr: String },
    /// A statement got no answer within `query_timeout`: the session is abandoned, and a leader
    /// steps down (it cannot show it still holds the lock).
    TimedOut {
        addr: String,
        what: &'static str,
        limit: Duration,
    },
    /// Anything else: the session broke, or a statement failed.
    Failed {
        addr: String,
        what: &'static str,
        error: String,
    },
}

/// MySQL/MariaDB server error codes the writer tells apart.
mod code {
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const ACCESS_DENIED: u16 = 1045;
    pub const BAD_FIELD: u16 = 1054;
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    pub const COLUMN_ACCESS_DENIED: u16 = 1143;
    pub const NO_SUCH_TABLE: u16 = 1146;
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// "running with the --read-only option" (also what our read-only guard raises).
    pub const OPTION_PREVENTS_STATEMENT: u16 = 1290;
    pub const DATA_TOO_LONG: u16 = 1406;
    pub const READ_ONLY_TRANSACTION: u16 = 1792;
    /// MySQL: "Running in read-only mode".
    pub const READ_ONLY_MODE: u16 = 1836;
}

impl Trouble {
    /// What a failed statement means. `what` names the step ("creating the heartbeat table");
    /// `table` is the qualified heartbeat table, for the fixes that name it.
    pub(super) fn classify(e: &Error, addr: &str, what: &'static str, table: &str) -> Trouble {
        let addr = addr.to_string();
        if db::is_timeout(e) {
            return Trouble::TimedOut {
                addr,
                what,
                limit: Duration::ZERO,
            };
        }
        let Error::Database {
            source: mysql_async::Error::Server(se),
            ..
        } = e
        else {
            return Trouble::Failed {
                addr,
                what,
                error: e.to_string(),
            };
        };
        let error = format!("{} ({})", se.message, se.code);
        match se.code {
            code::OPTION_PREVENTS_STATEMENT | code::READ_ONLY_MODE | code::READ_ONLY_TRANSACTION => {
                Trouble::ReadOnly { addr }
            }
            code::BAD_FIELD => Trouble::MissingColumns {
                table: table.to_string(),
                error,
            },
            code::NO_SUCH_TABLE => Trouble::MissingTable {
                table: table.to_string(),
            },
            code::DATA_TOO_LONG => Trouble::WriterIdTooLong { addr },
            code::ACCESS_DENIED => Trouble::Denied {
                addr,
                error,
                fix: "check the user and password in cluster.primary (password from MILLILAG_DB_PASSWORD or password_file)".into(),
            },
            code::DB_ACCESS_DENIED
            | code::TABLE_ACCESS_DENIED
            | code::COLUMN_ACCESS_DENIED
            | code::SPECIFIC_ACCESS_DENIED => Trouble::Denied {
                addr,
                error,
                fix: format!(
                    "GRANT SELECT, INSERT, UPDATE, CREATE ON the heartbeat table's database ({table}) to the writer's user, or create the table yourself and set writer.create_table = false"
                ),
            },
            _ => Trouble::Failed { addr, what, error },
        }
    }

    /// With the limit a timeout ran into, for the message.
    pub(super) fn with_limit(self, limit: Duration) -> Trouble {
        match self {
            Trouble::TimedOut { addr, what, .. } => Trouble::TimedOut { addr, what, limit },
            other => other,
        }
    }

    /// Identity for "already said": the kind and where, not the changing details.
    fn key(&self) -> String {
        match self {
            Trouble::Unreachable { addr, .. } => format!("unreachable {addr}"),
            Trouble::ReadOnly { addr } => format!("read-only {addr}"),
            Trouble::SeveralWritable { addrs } => format!("several {}", addrs.join(",")),
            Trouble::Denied { addr, .. } => format!("denied {addr}"),
            Trouble::MissingColumns { table, .. } => format!("columns {table}"),
            Trouble::MissingTable { table } => format!("table {table}"),
            Trouble::WriterIdTooLong { addr } => format!("writer_id {addr}"),
            Trouble::TimedOut { addr, what, .. } => format!("timeout {addr} {what}"),
            Trouble::Failed { addr, what, .. } => format!("failed {addr} {what}"),
        }
    }

    /// A few words for /readyz.
    fn summary(&self) -> String {
        match self {
            Trouble::Unreachable { addr, .. } => format!("{addr} unreachable"),
            Trouble::ReadOnly { addr } => format!("{addr} is read-only"),
            Trouble::SeveralWritable { addrs } => format!("{} all writable", addrs.join(", ")),
            Trouble::Denied { addr, .. } => format!("{addr} refused a privilege"),
            Trouble::MissingColumns { table, .. } => format!("{table} lacks seq/writer_id"),
            Trouble::MissingTable { table } => format!("{table} does not exist"),
            Trouble::WriterIdTooLong { .. } => "writer_id too long".into(),
            Trouble::TimedOut { addr, what, .. } => format!("{addr}: {what} timed out"),
            Trouble::Failed { addr, what, .. } => format!("{addr}: {what} failed"),
        }
    }

    /// The one log line: the cause, then the fix.
    fn log(&self) {
        match self {
            Trouble::Unreachable { addr, error } => warn!(
                primary = %addr, error = %error,
                "Primary unreachable; retrying with backoff."
            ),
            Trouble::ReadOnly { addr } => warn!(
                primary = %addr,
                "Primary is read-only (@@read_only is on): the writer does not write there. If it is the primary, make it writable (SET GLOBAL read_only = 0); after a switchover, list the new primary in cluster.primary (it takes several candidates, the writable one is used). Retrying with backoff."
            ),
            Trouble::SeveralWritable { addrs } => warn!(
                candidates = %addrs.join(", "),
                "Several primary candidates are writable: the writer picks no side and writes to none until exactly one is. Set read_only = 1 on those that are not the primary (and in their config file: read_only does not survive a restart). Retrying with backoff."
            ),
            Trouble::Denied { addr, error, fix } => warn!(
                primary = %addr, error = %error,
                "Primary refused the writer's user: {fix}. Retrying with backoff."
            ),
            Trouble::MissingColumns { table, error } => warn!(
                table = %table, error = %error,
                "The heartbeat table lacks millilag's columns (pt-heartbeat's own table?): ALTER TABLE {table} ADD COLUMN seq bigint unsigned NOT NULL DEFAULT 0, ADD COLUMN writer_id varchar(64) DEFAULT NULL (pt-heartbeat keeps working), or point cluster.table at another table. Retrying with backoff."
            ),
            Trouble::MissingTable { table } => warn!(
                table = %table,
                "The heartbeat table does not exist and writer.create_table = false: create it (README, \"The heartbeat table\") or set create_table = true. Retrying with backoff."
            ),
            Trouble::WriterIdTooLong { addr } => warn!(
                primary = %addr,
                "writer_id does not fit the heartbeat table's writer_id column (64 characters): set a shorter writer.writer_id. Retrying with backoff."
            ),
            Trouble::TimedOut { addr, what, limit } => warn!(
                primary = %addr, limit = ?limit,
                "No answer while {what} within cluster.query_timeout: the session is abandoned (a leader steps down, as it cannot show it still holds the lock). Reconnecting with backoff."
            ),
            Trouble::Failed { addr, what, error } => warn!(
                primary = %addr, error = %error,
                "Failed while {what}; reconnecting with backoff."
            ),
        }
    }
}

/// One cluster's writer health: what was already logged, the backoff, readiness.
pub(super) struct Status {
    cluster: String,
    backoff: Backoff,
    /// Troubles logged since the writer was last healthy: each is said once.
    said: BTreeSet<String>,
    since: Option<Instant>,
    readiness: Readiness,
    metrics: Arc<ClusterMetrics>,
}

impl Status {
    pub(super) fn new(cluster: &str, readiness: Readiness, metrics: Arc<ClusterMetrics>) -> Self {
        Status {
            cluster: cluster.to_string(),
            backoff: RetryPolicy::RECONNECT.backoff(),
            said: BTreeSet::new(),
            since: None,
            readiness,
            metrics,
        }
    }

    /// An attempt failed for `troubles` (one per candidate tried): log the new ones, mark the
    /// cluster not ready, and return how long to wait before the next attempt.
    pub(super) fn failed(&mut self, troubles: &[Trouble]) -> Duration {
        self.metrics.db_errors.inc();
        self.metrics.leader.set(0);
        self.since.get_or_insert_with(Instant::now);
        for t in troubles {
            if self.said.insert(t.key()) {
                t.log();
            }
        }
        let why: Vec<String> = troubles.iter().map(Trouble::summary).collect();
        self.readiness.set(&self.cluster, Some(why.join(", ")));
        self.backoff.next_delay()
    }

    /// Whether the last attempt failed (then routine lines, like taking the lead again, are
    /// not worth repeating at every retry).
    pub(super) fn in_trouble(&self) -> bool {
        self.since.is_some()
    }

    /// Standing by or leading: the writer does its job again.
    pub(super) fn healthy(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            info!(down_for = ?since.elapsed(), "Heartbeat session working again ({what}).");
        }
        self.said.clear();
        self.backoff.reset();
        self.readiness.set(&self.cluster, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> Error {
        Error::database(
            "db1:3306",
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }),
        )
    }

    #[test]
    fn server_refusals_name_their_cause() {
        let t = |code| Trouble::classify(&server_error(code), "db1:3306", "x", "`m`.`h`");
        assert!(matches!(t(1290), Trouble::ReadOnly { .. }));
        assert!(matches!(t(1836), Trouble::ReadOnly { .. }));
        assert!(matches!(t(1054), Trouble::MissingColumns { .. }));
        assert!(matches!(t(1146), Trouble::MissingTable { .. }));
        assert!(matches!(t(1406), Trouble::WriterIdTooLong { .. }));
        for denied in [1044, 1045, 1142, 1143, 1227] {
            assert!(matches!(t(denied), Trouble::Denied { .. }), "{denied}");
        }
        assert!(matches!(t(1213), Trouble::Failed { .. }));
        let timeout = db::timed_out("db1:3306", "slow");
        assert!(matches!(
            Trouble::classify(&timeout, "db1:3306", "x", "t"),
            Trouble::TimedOut { .. }
        ));
    }

    #[test]
    fn each_trouble_is_counted_every_time_backs_off_and_resets_when_healthy() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(
            super::super::WriterMetrics::new(&mut registry)
                .for_cluster("c", std::time::Duration::from_millis(10)),
        );
        let health = millilag_core::http::Health::starting();
        let readiness = Readiness::new(health.clone(), ["c"]);
        let mut s = Status::new("c", readiness, metrics.clone());
        let ro = Trouble::ReadOnly {
            addr: "db1:3306".into(),
        };
        let delays: Vec<Duration> = (0..6)
            .map(|_| s.failed(std::slice::from_ref(&ro)))
            .collect();
        assert_eq!(metrics.db_errors.get(), 6);
        assert_eq!(s.said.len(), 1, "one line for one cause");
        assert!(delays[0] >= RetryPolicy::RECONNECT.initial);
        assert!(delays
            .windows(2)
            .all(|w| w[1] >= w[0].min(RetryPolicy::RECONNECT.max) / 2));
        assert!(delays[5] >= Duration::from_secs(4), "{delays:?}");
        assert_eq!(
            health.not_ready_reason().as_deref(),
            Some("cluster c: db1:3306 is read-only")
        );
        s.healthy("leading");
        assert!(s.said.is_empty());
        assert_eq!(health.not_ready_reason(), None);
        assert!(
            s.failed(&[ro]) < Duration::from_millis(300),
            "backoff starts over"
        );
    }
}
