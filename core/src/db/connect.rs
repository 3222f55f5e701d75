//! Opening a connection: bounded in time, secured as the cluster's `tls` keys say, and, when it
//! fails, an error that says what to fix and which key to change.
//!
//! verify-ca (the certificate must chain to the CA, whatever name it carries) is done here:
//! mysql_async 0.37's switch for skipping the name check does not work with rustls 0.23
//! (blackbeam/mysql_async#404). When the CA-verified certificate names another host, the
//! connect is repeated verifying against a name the certificate lists (rustls reports them with
//! the mismatch, after the chain was verified), so the connection stays bound to a certificate
//! the CA signed. The name is remembered per server, so this costs one extra handshake per
//! server and process.

use crate::config::{DbUrl, TlsMode};
use crate::error::{Error, Result};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// verify-ca: per server address, the certificate name its connections are verified against.
static VERIFY_CA_NAMES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Open one connection, bounded by [`CONNECT_TIMEOUT`], in autocommit with READ COMMITTED:
/// every poll sees the newest committed row instead of a REPEATABLE READ snapshot.
pub async fn connect(url: &DbUrl, password: Option<&str>) -> Result<Conn> {
    let addr = url.address();
    let verify_ca = url.tls().mode == TlsMode::VerifyCa;
    let learned = || {
        VERIFY_CA_NAMES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    };
    let name = if verify_ca { learned() } else { None };
    let mut result = open(url, password, name.as_deref()).await;
    if verify_ca {
        if let Err(e) = &result {
            let names = crate::tls::find_rustls_error(e)
                .map(crate::tls::presented_names)
                .unwrap_or_default();
            if let Some(first) = names.into_iter().next() {
                VERIFY_CA_NAMES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr.clone(), first.clone());
                result = open(url, password, Some(&first)).await;
            }
        }
    }
    let mut conn = result.map_err(|e| {
        let hint = hint(url, &e);
        Error::database(&addr, e).with_hint(hint)
    })?;
    // The statement form works on every MySQL and MariaDB version (the variable was renamed).
    conn.query_drop("SET autocommit = 1; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(|e| Error::database(&addr, e))?;
    Ok(conn)
}

async fn open(
    url: &DbUrl,
    password: Option<&str>,
    server_name: Option<&str>,
) -> Result<Conn, mysql_async::Error> {
    let opts = url.opts_with_server_name(password, server_name);
    tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts))
        .await
        .unwrap_or_else(|_| {
            Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {CONNECT_TIMEOUT:?}"),
                ),
            )))
        })
}

/// What to fix, naming the cluster's keys, for the failures TLS explains; None for the rest.
fn hint(url: &DbUrl, e: &mysql_async::Error) -> Option<String> {
    let tls = url.tls();
    let key = if tls.key.is_empty() {
        "cluster[..]"
    } else {
        tls.key.as_str()
    };
    if let Some(r) = crate::tls::find_rustls_error(e) {
        let what = crate::tls::certificate_hint(r, &format!("{key}.tls_ca_file"))
            .unwrap_or_else(|| "the TLS handshake failed".into());
        return Some(format!(
            "{what} ({key}.tls = \"{}\"; \"require\" encrypts without checking the certificate)",
            tls.mode.as_str()
        ));
    }
    match e {
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            Some(format!(
                "the server does not offer TLS: enable it there (ssl_cert, ssl_key) or set {key}.tls = \"off\""
            ))
        }
        // 3159: MySQL's require_secure_transport; 1045: access denied, which is also what an
        // account with REQUIRE SSL gets over plaintext.
        mysql_async::Error::Server(s) if tls.mode == TlsMode::Off && s.code == 3159 => Some(format!(
            "the server accepts TLS connections only: set {key}.tls (and {key}.tls_ca_file)"
        )),
        mysql_async::Error::Server(s) if tls.mode == TlsMode::Off && s.code == 1045 => Some(format!(
            "if the account requires TLS (REQUIRE SSL/X509) or the server has \
             require_secure_transport, set {key}.tls (and {key}.tls_ca_file)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbTls;

    fn url(mode: TlsMode) -> DbUrl {
        let mut u = DbUrl::parse("mysql://u@db1:3306").unwrap();
        u.set_tls(DbTls {
            mode,
            ssl: None,
            key: "cluster[2]".into(),
        });
        u
    }

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "m".into(),
            state: "HY000".into(),
        })
    }

    #[test]
    fn hints_name_the_clusters_tls_keys() {
        let no_tls =
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer);
        let h = hint(&url(TlsMode::VerifyIdentity), &no_tls).unwrap();
        assert!(h.contains("set cluster[2].tls = \"off\""), "{h}");
        let h = hint(&url(TlsMode::Off), &server(3159)).unwrap();
        assert!(
            h.contains("TLS connections only: set cluster[2].tls"),
            "{h}"
        );
        let h = hint(&url(TlsMode::Off), &server(1045)).unwrap();
        assert!(
            h.contains("REQUIRE SSL") && h.contains("cluster[2].tls"),
            "{h}"
        );
        // With TLS on, access denied is about the password: no TLS hint.
        assert_eq!(hint(&url(TlsMode::VerifyIdentity), &server(1045)), None);
        assert_eq!(hint(&url(TlsMode::Off), &server(1142)), None);
    }
}
