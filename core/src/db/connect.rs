//! Connections and the bounds on every call: a connection attempt within `connect_timeout`,
//! each statement within `query_timeout` ([`bounded`]), TCP keepalive on, and a hung
//! connection closed without waiting for its server ([`close`]). Also the read-only check that
//! tells the writable primary among several candidates.

use super::tls;
use crate::config::{ClusterConfig, DbUrl, TlsMode};
use crate::error::{Error, Result};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::future::Future;
use std::time::Duration;

/// How long database calls may take (`[[cluster]] connect_timeout`, `query_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    /// A connection attempt, handshake and session set-up included.
    pub connect: Duration,
    /// One statement's round trip.
    pub query: Duration,
}

impl DbTimeouts {
    /// The config's defaults, also used by helpers called without a cluster's timeouts.
    pub const DEFAULT: DbTimeouts = DbTimeouts {
        connect: Duration::from_secs(3),
        query: Duration::from_secs(5),
    };
}

/// How long a connection attempt may take before the server counts as unreachable (the default
/// `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = DbTimeouts::DEFAULT.connect;

/// Idle time before the first TCP keepalive probe: a dead peer is found within this plus the
/// kernel's probe interval, even on a connection no statement is waiting on.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(10);

/// `fut` (one statement on a connection to `addr`), given at most `limit`. A timeout is an
/// [`Error::Database`] with an I/O `TimedOut` source (retryable, the server's fault), naming
/// the limit; the connection must then be dropped or [`close`]d, not reused.
pub async fn bounded<T>(
    limit: Duration,
    addr: &str,
    fut: impl Future<Output = std::result::Result<T, mysql_async::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| Error::database(addr, e)),
        Err(_) => Err(timed_out(addr, &format!("no answer within {limit:?}"))),
    }
}

/// The error for a database call that did not finish in time.
pub fn timed_out(addr: &str, what: &str) -> Error {
    Error::database(
        addr,
        mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            what.to_string(),
        ))),
    )
}

/// Whether `e` is a call that ran out of time (see [`bounded`]).
pub fn is_timeout(e: &Error) -> bool {
    matches!(
        e,
        Error::Database {
            source: mysql_async::Error::Io(mysql_async::IoError::Io(io)),
            ..
        } if io.kind() == std::io::ErrorKind::TimedOut
    )
}

/// Close a connection without waiting on its server for long: COM_QUIT is sent if the socket
/// takes it, then the socket is closed. Dropping a connection instead would leave a task behind
/// that waits for a hung server to finish the abandoned statement.
pub async fn close(conn: Conn) {
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
}

/// [`connect_with`] the default timeouts.
pub async fn connect(url: &DbUrl, password: Option<&str>) -> Result<Conn> {
    connect_with(url, password, &DbTimeouts::DEFAULT).await
}

/// Open one connection, bounded by `timeouts.connect` as a whole, in autocommit with READ
/// COMMITTED: every poll sees the newest committed row instead of a REPEATABLE READ snapshot.
/// Secured as the cluster's `tls` keys say (see [`super::tls`] for verify-ca); a failure that
/// TLS explains carries a hint naming the key to fix.
pub async fn connect_with(
    url: &DbUrl,
    password: Option<&str>,
    timeouts: &DbTimeouts,
) -> Result<Conn> {
    let verify_ca = url.tls().mode == TlsMode::VerifyCa;
    let name = if verify_ca {
        tls::learned_name(url)
    } else {
        None
    };
    let mut result = open(url, password, name.as_deref(), timeouts).await;
    if verify_ca {
        if let Some(learned) = result.as_ref().err().and_then(|e| tls::learn_name(url, e)) {
            result = open(url, password, Some(&learned), timeouts).await;
        }
    }
    result.map_err(|e| {
        let hint = tls::hint(url, &e);
        e.with_hint(hint)
    })
}

/// One connection attempt, verifying the server's certificate against `server_name` when given.
async fn open(
    url: &DbUrl,
    password: Option<&str>,
    server_name: Option<&str>,
    timeouts: &DbTimeouts,
) -> Result<Conn> {
    let addr = url.address();
    let open = async {
        let mut conn = Conn::new(url.opts_with_server_name(password, server_name)).await?;
        // The statement form works on every MySQL and MariaDB version (the variable was renamed).
        conn.query_drop(
            "SET autocommit = 1; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        .await?;
        Ok(conn)
    };
    match tokio::time::timeout(timeouts.connect, open).await {
        Ok(r) => r.map_err(|e| Error::database(&addr, e)),
        Err(_) => Err(timed_out(
            &addr,
            &format!("connect timed out after {:?}", timeouts.connect),
        )),
    }
}

/// `@@global.read_only` as the server prints it ("0"/"1" on MariaDB 10.x and MySQL, "OFF"/"ON"
/// and more modes where it became an enum): anything but off is read-only. A writer checks it
/// because a user with SUPER (or READ ONLY ADMIN) is not stopped by read_only and would write
/// errant transactions on a demoted primary.
pub const READ_ONLY_SQL: &str = "SELECT CAST(@@global.read_only AS CHAR)";

/// Whether a [`READ_ONLY_SQL`] answer means read-only.
pub fn read_only_value(v: Option<&str>) -> bool {
    !matches!(v.map(str::trim), Some("0" | "OFF" | "off"))
}

/// Whether the server behind `conn` refuses writes (`@@global.read_only`).
pub async fn is_read_only(conn: &mut Conn, addr: &str, limit: Duration) -> Result<bool> {
    let v: Option<String> = bounded(limit, addr, conn.query_first(READ_ONLY_SQL)).await?;
    Ok(read_only_value(v.as_deref()))
}

/// A connection to the cluster's primary: with one `primary` URL that one; with several
/// candidates the writable one (`@@read_only = 0`), else the first that answers. Services other
/// than the writer use it for what only the primary knows (its clock, its replicas).
pub async fn connect_primary(c: &ClusterConfig) -> Result<(Conn, DbUrl)> {
    let timeouts = c.db_timeouts();
    let password = c.password.as_ref().map(|p| p.expose());
    if let [only] = c.primaries.as_slice() {
        return Ok((connect_with(only, password, &timeouts).await?, only.clone()));
    }
    let mut fallback: Option<(Conn, DbUrl)> = None;
    let mut last_err = None;
    for url in &c.primaries {
        let mut conn = match connect_with(url, password, &timeouts).await {
            Ok(conn) => conn,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match is_read_only(&mut conn, &url.address(), timeouts.query).await {
            Ok(false) => {
                if let Some((other, _)) = fallback.take() {
                    close(other).await;
                }
                return Ok((conn, url.clone()));
            }
            Ok(true) if fallback.is_none() => fallback = Some((conn, url.clone())),
            Ok(true) => close(conn).await,
            Err(e) => {
                close(conn).await;
                last_err = Some(e);
            }
        }
    }
    match (fallback, last_err) {
        (Some(found), _) => Ok(found),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::Config(format!(
            "cluster {}: no primary configured",
            c.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_values() {
        assert!(!read_only_value(Some("0")));
        assert!(!read_only_value(Some("OFF")));
        for ro in ["1", "ON", "NO_LOCK", "NO_LOCK_NO_ADMIN"] {
            assert!(read_only_value(Some(ro)), "{ro}");
        }
        // A server that does not say is not trusted with writes.
        assert!(read_only_value(None));
    }
}
